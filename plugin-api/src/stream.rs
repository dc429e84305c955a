//! Answers sent as they go: streamed bodies and Server-Sent Events
//! (contract 1.4).

use std::time::Duration;

use abi_stable::std_types::{RResult, RStr, RString, RVec, Tuple2};

use crate::{Host, Response, TaskError, abi::STREAM_EXTENSION, lifespan};

/// How often an idle event stream gets a keep-alive comment.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

type SendFn = extern "C" fn(RStr<'_>, u64, RVec<u8>) -> async_ffi::FfiFuture<RResult<(), RString>>;
type CloseFn = extern "C" fn(RStr<'_>, u64);

/// The sending end of a streamed response body. Each
/// [`send`](BodySender::send) waits while the client is slow and fails
/// once it has gone (or the plugin stopped); dropping the sender ends the
/// body.
pub struct BodySender {
    plugin: &'static str,
    id: u64,
    send: SendFn,
    close: CloseFn,
}

impl BodySender {
    /// Sends a chunk of the body.
    pub async fn send(&self, chunk: impl Into<Vec<u8>>) -> Result<(), TaskError> {
        match (self.send)(RStr::from(self.plugin), self.id, RVec::from(chunk.into())).await {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(TaskError::new(e.into_string())),
        }
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        (self.close)(RStr::from(self.plugin), self.id);
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

impl Event {
    /// An event whose `data` is `data` (several lines are sent as several
    /// `data:` lines, as the format wants).
    pub fn data(data: impl Into<String>) -> Self {
        Self {
            data: data.into(),
            ..Self::default()
        }
    }

    /// An event whose data is `value` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        Self::data(serde_json::to_string(value).unwrap_or_default())
    }

    /// Names the event (`event:`; the browser's `addEventListener(name)`).
    pub fn name(mut self, name: &str) -> Self {
        self.event = Some(name.replace(['\r', '\n'], " "));
        self
    }

    /// Gives the event an id (`id:`; a reconnecting browser sends the last
    /// one as `Last-Event-ID`).
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.replace(['\r', '\n'], " "));
        self
    }

    /// The event in the wire format.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        if let Some(event) = &self.event {
            text.push_str(&format!("event: {event}\n"));
        }
        if let Some(id) = &self.id {
            text.push_str(&format!("id: {id}\n"));
        }
        for line in self.data.split('\n') {
            text.push_str(&format!("data: {}\n", line.trim_end_matches('\r')));
        }
        text.push('\n');
        text
    }
}

/// The sending end of an event stream ([`Host::sse`]).
pub struct EventSender(BodySender);

impl EventSender {
    /// Sends one event; fails once the client has gone.
    pub async fn send(&self, event: &Event) -> Result<(), TaskError> {
        self.0.send(event.to_text()).await
    }
}

impl Host {
    /// A response (status 200, `content_type`) whose body the plugin sends
    /// as it goes, and the sender to send it with: return the response from
    /// the handler and hand the sender to a task
    /// ([`spawn`](Host::spawn)). The body ends when the sender is dropped
    /// or the plugin stops.
    pub fn stream(&self, content_type: &str) -> Result<(Response, BodySender), TaskError> {
        self.open_stream(content_type, Duration::ZERO)
    }

    /// A Server-Sent Events answer (`text/event-stream`, not cached,
    /// a keep-alive comment every 15 s while idle) and its sender.
    ///
    /// ```no_run
    /// use plugin_api::{Error, Event, Request, Response, host};
    ///
    /// async fn feed(_req: Request<'_>) -> Result<Response, Error> {
    ///     let (response, events) = host().sse()?;
    ///     let mut created = host().subscribe("notice.created")?;
    ///     host().spawn("feed", async move {
    ///         while let Some(notice) = created.next().await {
    ///             if events.send(&Event::data(notice).name("notice")).await.is_err() {
    ///                 return; // the client has gone
    ///             }
    ///         }
    ///     })?;
    ///     Ok(response)
    /// }
    /// ```
    pub fn sse(&self) -> Result<(Response, EventSender), TaskError> {
        self.sse_keep_alive(SSE_KEEP_ALIVE)
    }

    /// [`sse`](Host::sse) with a keep-alive comment after `every` without
    /// an event (proxies close idle connections; browsers reconnect).
    pub fn sse_keep_alive(&self, every: Duration) -> Result<(Response, EventSender), TaskError> {
        let (response, sender) = self.open_stream("text/event-stream", every)?;
        Ok((
            response
                .with_header("cache-control", "no-cache")
                .with_header("x-accel-buffering", "no"),
            EventSender(sender),
        ))
    }

    fn open_stream(
        &self,
        content_type: &str,
        keep_alive: Duration,
    ) -> Result<(Response, BodySender), TaskError> {
        let services = self.services();
        let (Some(open), Some(send), Some(close)) = (
            services.stream_open(),
            services.stream_send(),
            services.stream_close(),
        ) else {
            return Err(TaskError::new(
                "this host sends no streamed answers: it needs a host built with plugin-api 1.4 or later",
            ));
        };
        let keep_alive_ms = u64::try_from(keep_alive.as_millis()).unwrap_or(u64::MAX);
        let id = match open(RStr::from(self.plugin()), lifespan::owner(), keep_alive_ms) {
            RResult::ROk(id) => id,
            RResult::RErr(e) => return Err(TaskError::new(e.into_string())),
        };
        let mut raw = Response::bytes(200, "", Vec::new()).into_raw();
        raw.content_type = abi_stable::std_types::RCowStr::Owned(RString::from(content_type));
        raw.extensions.push(Tuple2(
            RString::from(STREAM_EXTENSION),
            RString::from(id.to_string()),
        ));
        Ok((
            Response::from_raw(raw),
            BodySender {
                plugin: self.plugin(),
                id,
                send,
                close,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Event;

    #[test]
    fn events_are_written_in_the_sse_format() {
        assert_eq!(Event::data("hi").to_text(), "data: hi\n\n");
        assert_eq!(
            Event::data("a\nb").name("note").id("7").to_text(),
            "event: note\nid: 7\ndata: a\ndata: b\n\n"
        );
        assert_eq!(Event::json(&[1, 2]).to_text(), "data: [1,2]\n\n");
    }
}
