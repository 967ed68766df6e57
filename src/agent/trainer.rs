//! Where VMs' models are fitted: a small pool of worker threads fed by a
//! queue, so that many VMs finishing their learning in the same window do
//! not start as many grid searches at once (CPU the host's guests need, and
//! an allocator arena each) while the agent's loop goes on.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// A handle on the pool; its threads end when the last handle is dropped.
#[derive(Clone)]
pub struct Trainer {
    jobs: Sender<Job>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trainer")
    }
}

impl Trainer {
    /// A quarter of the host's CPUs, from 1 to 8 workers: training is
    /// background work next to the guests.
    pub fn workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).clamp(1, 8))
    }

    pub fn start(workers: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..workers.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("train-{i}"))
                .spawn(move || work(&queue))?;
        }
        Ok(Self { jobs })
    }

    /// Queues `job`; false when the pool is gone.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> bool {
        self.jobs.send(Box::new(job)).is_ok()
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job.
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        job();
        // A grid search on wide rows frees hundreds of MB it touched; give
        // them back rather than keep them resident for the agent's life.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_one_after_another_on_one_worker() {
        let t = Trainer::start(1).unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..5 {
            let tx = tx.clone();
            assert!(t.submit(move || {
                std::thread::sleep(std::time::Duration::from_millis(5));
                tx.send(i).unwrap();
            }));
        }
        let got: Vec<i32> = (0..5).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert!(Trainer::workers() >= 1);
    }
}
