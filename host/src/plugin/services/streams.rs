//! Streamed response bodies: a channel the host owns, which a plugin's
//! run feeds (`stream_send`, waiting while the client reads slowly) and
//! whose receiving end becomes the body of the response that names it
//! (`RawResponse` extension `plugin_api::abi::STREAM_EXTENSION`). Optional keep-alive
//! chunks (an SSE comment) go out while the plugin sends nothing.
//!
//! *Invariant:* a stopped run owns no stream: its streams' senders are
//! dropped when it ends, so their responses end and later sends fail.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use abi_stable::std_types::{RResult, RStr, RString, RVec};
use async_ffi::FfiFuture;
use bytes::Bytes;
use futures_util::FutureExt as _;
use tokio::sync::mpsc;

use super::lifespan::run_of;
use super::waker::IntoPluginFuture as _;

/// Chunks a stream buffers before a send waits for the client.
const BUFFER: usize = 16;
/// What a keep-alive chunk says (an SSE comment line).
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

struct Stream {
    plugin: String,
    run: u64,
    sender: mpsc::Sender<Bytes>,
    receiver: Option<mpsc::Receiver<Bytes>>,
    keep_alive: Option<Duration>,
}

static STREAMS: Mutex<Option<HashMap<u64, Stream>>> = Mutex::new(None);
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

fn with_streams<T>(work: impl FnOnce(&mut HashMap<u64, Stream>) -> T) -> T {
    work(
        STREAMS
            .lock()
            .expect("streams lock")
            .get_or_insert_with(HashMap::new),
    )
}

/// Ends every stream of run `run` (it stopped).
pub(super) fn end_run(run: u64) {
    with_streams(|streams| streams.retain(|_, s| s.run != run));
}

/// The receiving end of a stream, taken by its response; when the
/// response is dropped (sent, or the client gone) the stream's entry goes,
/// so the plugin's next send fails at once.
struct Claimed {
    id: u64,
    plugin: Box<str>,
    receiver: mpsc::Receiver<Bytes>,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let id = self.id;
        with_streams(|streams| streams.remove(&id));
    }
}

/// The body of the response that names stream `id`: its chunks as the
/// plugin sends them, keep-alive chunks between, ending when the plugin
/// closes it or its run stops, or, for a stream without keep-alive, when
/// the plugin sends nothing for `idle` (its request's deadline). `None`
/// when `plugin` has no such stream, or its body was taken already.
pub fn take_body(
    plugin: &str,
    id: u64,
    idle: std::time::Duration,
) -> Option<impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + use<>> {
    let (receiver, keep_alive) = with_streams(|streams| {
        let stream = streams.get_mut(&id).filter(|s| s.plugin == plugin)?;
        Some((stream.receiver.take()?, stream.keep_alive))
    })?;
    let claimed = Claimed {
        id,
        plugin: plugin.into(),
        receiver,
    };
    Some(futures_util::stream::unfold(
        claimed,
        move |mut claimed| async move {
            let chunk = match keep_alive {
                None => match tokio::time::timeout(idle, claimed.receiver.recv()).await {
                    Ok(chunk) => chunk?,
                    Err(_) => {
                        tracing::warn!(
                            plugin = %claimed.plugin,
                            stream = claimed.id,
                            "the stream sent nothing for {idle:?} and has no keep-alive: ended"
                        );
                        return None;
                    }
                },
                Some(every) => match tokio::time::timeout(every, claimed.receiver.recv()).await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => return None,
                    Err(_) => Bytes::from_static(KEEP_ALIVE),
                },
            };
            Some((Ok(chunk), claimed))
        },
    ))
}

/// [`HostServices::stream_open`](plugin_api::abi::HostServices::stream_open).
pub(super) extern "C" fn stream_open(
    plugin: RStr<'_>,
    owner: u64,
    keep_alive_ms: u64,
) -> RResult<u64, RString> {
    let plugin = plugin.as_str();
    let Some(run) = run_of(plugin, owner) else {
        return RResult::RErr(RString::from(format!(
            "plugin '{plugin}' cannot open a stream: it is not running"
        )));
    };
    let (sender, receiver) = mpsc::channel(BUFFER);
    let id = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    with_streams(|streams| {
        streams.insert(
            id,
            Stream {
                plugin: plugin.to_owned(),
                run: run.id(),
                sender,
                receiver: Some(receiver),
                keep_alive: (keep_alive_ms > 0).then(|| Duration::from_millis(keep_alive_ms)),
            },
        );
    });
    RResult::ROk(id)
}

/// [`HostServices::stream_send`](plugin_api::abi::HostServices::stream_send).
pub(super) extern "C" fn stream_send(
    plugin: RStr<'_>,
    stream: u64,
    chunk: RVec<u8>,
) -> FfiFuture<RResult<(), RString>> {
    let plugin = plugin.as_str().to_owned();
    let sender = with_streams(|streams| {
        streams
            .get(&stream)
            .filter(|s| s.plugin == plugin)
            .map(|s| s.sender.clone())
    });
    async move {
        let sender = sender.ok_or_else(|| {
            RString::from(format!(
                "stream {stream} is closed (the plugin stopped or closed it)"
            ))
        })?;
        if sender.send(Bytes::from(chunk.into_vec())).await.is_err() {
            with_streams(|streams| streams.remove(&stream));
            return Err(RString::from(format!(
                "stream {stream} is closed: the client has gone"
            )));
        }
        Ok(())
    }
    .map(RResult::from)
    .into_plugin_ffi()
}

/// [`HostServices::stream_close`](plugin_api::abi::HostServices::stream_close).
pub(super) extern "C" fn stream_close(plugin: RStr<'_>, stream: u64) {
    with_streams(|streams| {
        if streams
            .get(&stream)
            .is_some_and(|s| s.plugin == plugin.as_str())
        {
            streams.remove(&stream);
        }
    });
}
