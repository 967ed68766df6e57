//! Link switches: the cost governor's way to thin a probe its semaphore does
//! not gate (QEMU's dtrace backend calls most probes unconditionally, and
//! some have no semaphore at all). Only detaching a probe's uprobes stops
//! its sites from trapping, but attaching takes a grace period (~8 ms here)
//! before the sites trap and detaching ~40 ms, neither of them at a known
//! instant. So a link the governor turns on and off carries a switch in its
//! cookies (`switches` in bpf/vmwatch.bpf.c): it is attached with its switch
//! off, counts from the instant the switch is written on, stops at the
//! instant it is written off, and is detached afterwards on a thread of its
//! own, which hands the switch back once the link is gone (a switch reused
//! while its old link still traps would count that link's hits too).

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use libbpf_rs::{Link, MapCore, MapFlags};

use crate::attach::Kernel;
use crate::error::{Error, Result};

/// A link whose sites count only while its switch is on.
pub struct SwitchedLink {
    link: Link,
    switch: u32,
    on: bool,
    /// The columns of its probes.
    pub columns: Vec<u32>,
}

impl SwitchedLink {
    pub(crate) fn new(link: Link, switch: u32, columns: Vec<u32>) -> Self {
        Self {
            link,
            switch,
            on: false,
            columns,
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }
}

/// The switches in use, and the threads detaching retired links.
pub struct Switches {
    free: Vec<u32>,
    /// Switches whose links are detached, back from the detaching threads.
    back: Receiver<u32>,
    freed: Sender<u32>,
    /// Detaching threads, joined at the end. A detach waits for grace
    /// periods (~40 ms), not for CPU: one thread per link, so they wait
    /// together and a retired link's sites stop trapping as early as the
    /// kernel allows, however many are retired at once.
    detaching: Vec<JoinHandle<()>>,
}

impl Switches {
    /// `capacity`: the `switches` map's entries.
    pub fn new(capacity: u32) -> Self {
        let (freed, back) = mpsc::channel();
        Self {
            free: (0..capacity).rev().collect(),
            back,
            freed,
            detaching: Vec::new(),
        }
    }

    /// A switch no link uses, off.
    pub fn take(&mut self, kernel: &Kernel<'_>) -> Result<u32> {
        self.free.extend(self.back.try_iter());
        let switch = self.free.pop().ok_or_else(|| {
            Error::Invalid(format!(
                "all {} link switches are in use",
                kernel.skel.maps.switches.max_entries()
            ))
        })?;
        kernel.set_switch(switch, false)?;
        Ok(switch)
    }

    /// Gives back a switch no link was attached with.
    pub fn put_back(&mut self, switch: u32) {
        self.free.push(switch);
    }

    /// Turns `link` off (if it is on) and detaches it in the background.
    pub fn retire(&mut self, kernel: &Kernel<'_>, mut link: SwitchedLink) {
        if let Err(e) = flip(kernel, &mut link, false) {
            tracing::warn!("{}", vmwatch_core::error::chain(&e));
        }
        self.detaching.retain(|t| !t.is_finished());
        let freed = self.freed.clone();
        let SwitchedLink { link, switch, .. } = link;
        let spawned = std::thread::Builder::new()
            .name("vmwatch-detach".into())
            .spawn(move || {
                let t = Instant::now();
                drop(link);
                tracing::trace!("detached a switched link in {:?}", t.elapsed());
                let _ = freed.send(switch);
            });
        match spawned {
            Ok(t) => self.detaching.push(t),
            // The link went with the failed closure, detached there and
            // then; its switch is lost until the end (4,096 of them).
            Err(e) => tracing::warn!("starting a thread to detach a link: {e}"),
        }
    }
}

impl Drop for Switches {
    /// Waits until every retired link is detached: nothing stays attached
    /// once the collector is gone.
    fn drop(&mut self) {
        for t in self.detaching.drain(..) {
            let _ = t.join();
        }
    }
}

/// Turns `link` on or off; returns when the write took effect.
pub fn flip(kernel: &Kernel<'_>, link: &mut SwitchedLink, on: bool) -> Result<Instant> {
    if link.on != on {
        kernel.set_switch(link.switch, on)?;
        link.on = on;
    }
    Ok(Instant::now())
}

impl Kernel<'_> {
    /// Writes switch `switch` of the `switches` map.
    pub(crate) fn set_switch(&self, switch: u32, on: bool) -> Result<()> {
        self.skel
            .maps
            .switches
            .update(
                &switch.to_ne_bytes(),
                &u32::from(on).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|e| Error::bpf(format!("turning link switch {switch} {}", on_off(on)), e))
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}
