//! A background thread that stops with the daemon: the evaluator and the rule
//! watcher. Its loop checks [`StopFlag::stopped`] between units of work; the
//! flag is the daemon's one [`CancellationToken`], so every stage, threads and
//! tasks alike, stops on the same signal.

use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

/// Told to the thread's loop that it should finish.
#[derive(Clone, Default)]
pub struct StopFlag(CancellationToken);

impl StopFlag {
    pub fn stopped(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// A named thread that is asked to stop when dropped.
pub struct Worker {
    token: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Spawns `body` on a thread called `name`. It stops when `stop` is called,
    /// when the worker is dropped, or when `parent` is cancelled.
    pub fn spawn(
        name: &str,
        parent: &CancellationToken,
        body: impl FnOnce(StopFlag) + Send + 'static,
    ) -> Worker {
        let token = parent.child_token();
        let flag = StopFlag(token.clone());
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(flag))
            .expect("spawning a thread");
        Worker {
            token,
            thread: Some(thread),
        }
    }

    /// Asks the thread to stop and waits for it.
    pub fn stop(mut self) {
        self.token.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
