//! Host futures handed to plugins, polled with a waker of the host's own.
//!
//! A plugin polls a host service's future with the waker it was given,
//! which reaches the host's task through two FFI layers: each clone of it
//! costs two allocations and two calls across the boundary, and a client
//! such as reqwest clones its waker at every place it waits (about nine
//! times for one request). [`IntoPluginFuture::into_plugin_ffi`] polls the
//! service's future with a waker that lives in the host instead: cloning
//! it is one reference count, and waking it wakes the plugin's waker of
//! the last poll left pending, cloned once by that poll.
//!
//! *Invariant:* the waker of the latest pending poll is the one woken; it
//! is replaced at every such poll, never compared (an FFI waker made for
//! one poll may sit at the address another one used, so `will_wake`
//! cannot tell them apart); a wake that comes during a poll is passed on
//! by that poll.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Wake, Waker},
};

use async_ffi::{FfiFuture, FutureExt as _};

/// The plugin's waker of the last poll that was left pending, or a wake
/// that came while there was none (the poll that stores one wakes it).
#[derive(Default)]
struct Latest(Mutex<Slot>);

#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    woken: bool,
}

impl Wake for Latest {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Taken out before it is woken: no lock is held across the call.
        let waker = self.0.lock().ok().and_then(|mut slot| {
            let waker = slot.waker.take();
            slot.woken = waker.is_none();
            waker
        });
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// `inner`, polled with a waker of the host's own.
    struct OwnWaker<F> {
        #[pin]
        inner: F,
        latest: Arc<Latest>,
        waker: Waker,
    }
}

impl<F: Future> Future for OwnWaker<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // The last poll's waker is let go first: a wake during this poll
        // is recorded, and passed to this poll's waker below.
        let stale = this.latest.0.lock().ok().and_then(|mut s| s.waker.take());
        drop(stale);
        let polled = this.inner.poll(&mut Context::from_waker(this.waker));
        // Cloned only when it is needed: a future that ends in this poll
        // costs no clone of the plugin's waker.
        if polled.is_pending()
            && let Ok(mut slot) = this.latest.0.lock()
        {
            if std::mem::take(&mut slot.woken) {
                // Woken during the poll, before there was a waker to wake.
                cx.waker().wake_by_ref();
            } else {
                slot.waker = Some(cx.waker().clone());
            }
        }
        polled
    }
}

/// A host future made into the FFI future a plugin awaits.
pub(crate) trait IntoPluginFuture: Future + Send + Sized + 'static
where
    Self::Output: 'static,
{
    /// This future as an FFI future polled with a host waker.
    fn into_plugin_ffi(self) -> FfiFuture<Self::Output> {
        let latest = Arc::new(Latest::default());
        OwnWaker {
            inner: self,
            waker: Waker::from(latest.clone()),
            latest,
        }
        .into_ffi()
    }
}

impl<F> IntoPluginFuture for F
where
    F: Future + Send + 'static,
    F::Output: 'static,
{
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_waker_of_the_latest_poll_is_woken() {
        let (sender, receiver) = futures_util::future::abortable(std::future::pending::<()>());
        let mut future = Box::pin(sender.into_plugin_ffi());
        let first = Arc::new(Count(AtomicUsize::new(0)));
        let second = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(first.clone());
        assert!(
            future
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let waker = Waker::from(second.clone());
        assert!(
            future
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        receiver.abort();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(
            future
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
        );
    }
}
