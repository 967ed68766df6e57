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

    /// The cookie of a site of `column` on a link with switch `switch`.
    pub fn cookie(switch: u32, column: u32) -> u64 {
        (u64::from(switch + 1) << 32) | u64::from(column)
    }
}

/// The thread that detaches retired links, and where to send them.
struct Reaper {
    links: Sender<(Link, u32)>,
    thread: JoinHandle<()>,
}

/// The switches in use and the thread that detaches retired links.
pub struct Switches {
    free: Vec<u32>,
    /// Switches whose links are detached, back from the reaper.
    back: Receiver<u32>,
    reaper: Option<Reaper>,
}

impl Switches {
    /// `capacity`: the `switches` map's entries.
    pub fn new(capacity: u32) -> Result<Self> {
        let (to_reaper, links) = mpsc::channel::<(Link, u32)>();
        let (freed, back) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("vmwatch-detach".into())
            .spawn(move || {
                for (link, switch) in links {
                    let t = Instant::now();
                    drop(link);
                    tracing::trace!("detached a switched link in {:?}", t.elapsed());
                    if freed.send(switch).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("starting the link-detaching thread", e))?;
        Ok(Self {
            free: (0..capacity).rev().collect(),
            back,
            reaper: Some(Reaper {
                links: to_reaper,
                thread,
            }),
        })
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
        match &self.reaper {
            Some(r) => {
                if let Err(mpsc::SendError((link, _))) = r.links.send((link.link, link.switch)) {
                    drop(link);
                }
            }
            None => drop(link),
        }
    }
}

impl Drop for Switches {
    /// Waits until every retired link is detached: nothing stays attached
    /// once the collector is gone.
    fn drop(&mut self) {
        if let Some(r) = self.reaper.take() {
            drop(r.links);
            let _ = r.thread.join();
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
