//! MQTT over WebSocket (MQTT 5.0 §6): the HTTP upgrade on the configured path with the `mqtt`
//! subprotocol, and an adapter that presents the message stream as a byte stream, so the
//! connection code is the same as for TCP. MQTT packets may span WebSocket frames and a frame
//! may hold several packets; only binary frames are allowed (MQTT-6.0.0-1).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Performs the upgrade; refuses other paths (404) and clients that offer subprotocols but not
/// `mqtt` (400). Frames and messages are bounded by `max_size` (the broker's Maximum Packet
/// Size plus framing), so a WebSocket client cannot make the broker buffer more than a TCP one.
pub async fn accept<S>(stream: S, path: &str, max_size: usize) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let path = path.to_string();
    // The callback's signature is tungstenite's; its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut e = ErrorResponse::new(Some("no MQTT endpoint at this path".into()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        if let Some(offered) = req.headers().get("sec-websocket-protocol") {
            let offered = offered.to_str().unwrap_or("");
            let chosen = offered
                .split(',')
                .map(str::trim)
                .find(|p| matches!(*p, "mqtt" | "mqttv3.1"));
            match chosen {
                Some(p) => {
                    if let Ok(v) = HeaderValue::from_str(p) {
                        resp.headers_mut().insert("sec-websocket-protocol", v);
                    }
                }
                None => {
                    let mut e = ErrorResponse::new(Some("subprotocol mqtt required".into()));
                    *e.status_mut() = StatusCode::BAD_REQUEST;
                    return Err(e);
                }
            }
        }
        Ok(resp)
    };
    let limit = max_size.saturating_add(64 * 1024);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(io::Error::other)?;
    Ok(WsStream {
        ws,
        pending: Bytes::new(),
    })
}

pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary frame.
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                // Pings are answered by tungstenite on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame on an MQTT WebSocket",
                    )));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        // Push the frame out now; a pending flush is finished by the next write or flush.
        let _ = Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
