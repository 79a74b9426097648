//! A background thread with a stop flag: the evaluator and the rule watcher.
//! The thread's loop checks [`StopFlag::stopped`] between units of work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Told to the thread's loop that it should finish.
#[derive(Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A named thread that is asked to stop when dropped.
pub struct Worker {
    flag: StopFlag,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Spawns `body` on a thread called `name`; it gets the stop flag.
    pub fn spawn(name: &str, body: impl FnOnce(StopFlag) + Send + 'static) -> Worker {
        let flag = StopFlag::default();
        let theirs = flag.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(theirs))
            .expect("spawning a thread");
        Worker {
            flag,
            thread: Some(thread),
        }
    }

    /// Asks the thread to stop and waits for it.
    pub fn stop(mut self) {
        self.flag.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.flag.stop();
    }
}
