//! The server's end of a websocket (RFC 6455) that holds no buffer while it waits.
//!
//! tungstenite's `WebSocket` keeps a read buffer, a write buffer and its codec state for the
//! whole life of a connection, about 2 KiB, and most chat connections are idle. This one reads
//! into a scratch buffer on the stack and keeps bytes only while a frame is arriving: an idle
//! connection costs the stream and a few words. tungstenite still does the parts that hold no
//! memory: frame headers, close codes, UTF-8 checked text.

use std::io::Cursor;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};

/// Bytes read from the stream at a time, into a buffer that lives only while a read is polled.
const SCRATCH: usize = 4096;

/// Largest payload of a control frame (ping, pong, close).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A websocket on `S` after its handshake, in the server's role: frames from the client must
/// be masked, frames to it are not.
pub(crate) struct WebSocket<S> {
    io: S,
    /// Bytes read but not decoded yet: the start of a frame whose rest is on its way, or frames
    /// that came in the same read as the message returned. Empty, and unallocated, between
    /// frames.
    unread: Vec<u8>,
    /// A message that came in fragments, while the rest of its fragments are on their way.
    /// Boxed: few clients fragment, and every connection has the field.
    fragments: Option<Box<Fragments>>,
    /// The largest message, and frame, accepted from the client.
    max_message: usize,
}

/// The fragments of a message received so far.
struct Fragments {
    text: bool,
    data: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    pub(crate) fn new(io: S, max_message: usize) -> Self {
        WebSocket {
            io,
            unread: Vec::new(),
            fragments: None,
            max_message,
        }
    }

    /// A websocket that carries on with `unread` bytes already read from `io` (a connection
    /// handed over by another process).
    pub(crate) fn resumed(io: S, max_message: usize, unread: Vec<u8>) -> Self {
        WebSocket {
            unread,
            ..WebSocket::new(io, max_message)
        }
    }

    /// Whether a fragmented message is half received: its fragments so far live only here.
    pub(crate) fn is_mid_message(&self) -> bool {
        self.fragments.is_some()
    }

    pub(crate) fn io(&self) -> &S {
        &self.io
    }

    /// The stream, and the bytes read from it but not decoded yet.
    pub(crate) fn into_parts(self) -> (S, Vec<u8>) {
        (self.io, self.unread)
    }

    /// The next message from the client; `None` once the stream has ended. Pings come out
    /// like any message: answering them ([`WebSocket::pong`]) is the caller's, as is the
    /// answer to a close ([`WebSocket::answer_close`]).
    ///
    /// Cancel-safe: bytes of a frame read before the future is dropped are kept for the next
    /// call.
    pub(crate) async fn read(&mut self) -> Option<Result<Message, Error>> {
        std::future::poll_fn(|cx| self.poll_read(cx)).await
    }

    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        loop {
            if !self.unread.is_empty() {
                let mut unread = std::mem::take(&mut self.unread);
                let decoded = self.decode(&unread);
                match decoded {
                    Ok((used, message)) => {
                        unread.drain(..used);
                        if !unread.is_empty() {
                            self.unread = unread;
                        }
                        if let Some(message) = message {
                            return Poll::Ready(Some(Ok(message)));
                        }
                    }
                    Err(error) => return Poll::Ready(Some(Err(error))),
                }
                if !self.unread.is_empty() {
                    // A frame is on its way: room for all of it, once, rather than growth
                    // a read at a time.
                    self.reserve_for_frame();
                }
            }
            let mut scratch = [0u8; SCRATCH];
            let mut buf = ReadBuf::new(&mut scratch);
            if let Err(error) = ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                return Poll::Ready(Some(Err(Error::Io(error))));
            }
            let read = buf.filled();
            if read.is_empty() {
                return Poll::Ready(None);
            }
            if !self.unread.is_empty() {
                self.unread.extend_from_slice(read);
                continue;
            }
            // Nothing pending: decode straight from the scratch buffer, and keep only what is
            // left of it.
            let (used, message) = match self.decode(read) {
                Ok(decoded) => decoded,
                Err(error) => return Poll::Ready(Some(Err(error))),
            };
            self.unread = read[used..].to_vec();
            if let Some(message) = message {
                return Poll::Ready(Some(Ok(message)));
            }
        }
    }

    /// Reserves room in `unread` for the whole of the frame it starts with, when its header is
    /// there and the frame is within the limit.
    fn reserve_for_frame(&mut self) {
        let mut cursor = Cursor::new(&self.unread[..]);
        if let Ok(Some((_, length))) = FrameHeader::parse(&mut cursor) {
            let total = cursor.position().saturating_add(length);
            if length <= self.max_message as u64 {
                self.unread
                    .reserve((total as usize).saturating_sub(self.unread.len()));
            }
        }
    }

    /// Decodes the frames at the start of `input` until one completes a message or the rest
    /// is not a whole frame: the bytes used, and the message if one completed.
    fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Message>), Error> {
        let mut used = 0;
        while let Some((header, payload)) = self.frame_at(&input[used..])? {
            let start = used + payload.start;
            used += payload.end;
            let mut data = input[start..used].to_vec();
            if let Some(mask) = header.mask {
                apply_mask(&mut data, mask);
            }
            if let Some(message) = self.message(header, data)? {
                return Ok((used, Some(message)));
            }
        }
        Ok((used, None))
    }

    /// The frame at the start of `input`: its header and where its payload lies, once all of
    /// it is there. A frame the server must refuse is an error as soon as its header is.
    fn frame_at(
        &self,
        input: &[u8],
    ) -> Result<Option<(FrameHeader, std::ops::Range<usize>)>, Error> {
        let mut cursor = Cursor::new(input);
        let Some((header, length)) = FrameHeader::parse(&mut cursor)? else {
            return Ok(None);
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(ProtocolError::NonZeroReservedBits.into());
        }
        if header.mask.is_none() {
            return Err(ProtocolError::UnmaskedFrameFromClient.into());
        }
        if let OpCode::Control(_) = header.opcode {
            if !header.is_final {
                return Err(ProtocolError::FragmentedControlFrame.into());
            }
            if length > MAX_CONTROL_PAYLOAD {
                return Err(ProtocolError::ControlFrameTooBig.into());
            }
        }
        if length > self.max_message as u64 {
            return Err(CapacityError::MessageTooLong {
                size: usize::try_from(length).unwrap_or(usize::MAX),
                max_size: self.max_message,
            }
            .into());
        }
        let start = cursor.position() as usize;
        let end = start + length as usize;
        if input.len() < end {
            return Ok(None);
        }
        Ok(Some((header, start..end)))
    }

    /// What a whole, unmasked frame means: a message, or a part of one.
    fn message(&mut self, header: FrameHeader, data: Vec<u8>) -> Result<Option<Message>, Error> {
        let data = match header.opcode {
            OpCode::Control(Control::Ping) => return Ok(Some(Message::Ping(data.into()))),
            OpCode::Control(Control::Pong) => return Ok(Some(Message::Pong(data.into()))),
            OpCode::Control(Control::Close) => {
                return close_frame(data.into()).map(|close| Some(Message::Close(close)))
            }
            OpCode::Control(Control::Reserved(code)) => {
                return Err(ProtocolError::UnknownControlFrameType(code).into())
            }
            OpCode::Data(Data::Reserved(code)) => {
                return Err(ProtocolError::UnknownDataFrameType(code).into())
            }
            OpCode::Data(Data::Continue) => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinueFrame.into());
                };
                let size = fragments.data.len() + data.len();
                if size > self.max_message {
                    return Err(CapacityError::MessageTooLong {
                        size,
                        max_size: self.max_message,
                    }
                    .into());
                }
                fragments.data.extend_from_slice(&data);
                if !header.is_final {
                    return Ok(None);
                }
                let Some(fragments) = self.fragments.take() else {
                    return Ok(None);
                };
                let Fragments { text, data } = *fragments;
                return data_message(text, data).map(Some);
            }
            OpCode::Data(kind) if self.fragments.is_some() => {
                return Err(ProtocolError::ExpectedFragment(kind).into())
            }
            OpCode::Data(_) => data,
        };
        let text = header.opcode == OpCode::Data(Data::Text);
        if header.is_final {
            data_message(text, data).map(Some)
        } else {
            self.fragments = Some(Box::new(Fragments { text, data }));
            Ok(None)
        }
    }

    /// Writes `bytes`, frames made by [`put_frame`], as they are.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// Writes one text frame.
    pub(crate) async fn write_text(&mut self, text: &str) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(text.len() + 10);
        put_frame(&mut out, Data::Text, text.as_bytes());
        self.io.write_all(&out).await
    }

    /// Answers a ping with its payload, as a websocket must.
    pub(crate) async fn pong(&mut self, payload: Bytes) -> std::io::Result<()> {
        self.write_control(Frame::pong(payload)).await
    }

    /// Answers the client's close with a close of the same code (RFC 6455 §5.5.1); a code a
    /// client may not send is answered as a protocol error, as tungstenite does.
    pub(crate) async fn answer_close(&mut self, close: Option<CloseFrame>) -> std::io::Result<()> {
        let reply = close.map(|close| {
            if close.code.is_allowed() {
                close
            } else {
                CloseFrame {
                    code: CloseCode::Protocol,
                    reason: Utf8Bytes::from_static("Protocol violation"),
                }
            }
        });
        self.write_control(Frame::close(reply)).await
    }

    /// Starts the closing handshake with a close frame that carries no code. The client's
    /// answer is not waited for: the caller drops the stream next.
    pub(crate) async fn close(&mut self) -> std::io::Result<()> {
        self.write_control(Frame::close(None)).await
    }

    async fn write_control(&mut self, frame: Frame) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(frame.len());
        frame.format(&mut out).map_err(std::io::Error::other)?;
        self.io.write_all(&out).await
    }
}

/// A data message from its whole payload.
fn data_message(text: bool, data: Vec<u8>) -> Result<Message, Error> {
    if text {
        Ok(Message::Text(Utf8Bytes::try_from(data)?))
    } else {
        Ok(Message::Binary(data.into()))
    }
}

/// The code and reason of a close frame's payload.
fn close_frame(payload: Bytes) -> Result<Option<CloseFrame>, Error> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::InvalidCloseSequence.into()),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]).into();
            let reason = Utf8Bytes::try_from(payload.slice(2..))?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Unmasks (or masks) a client's payload: each byte XORed with the key, in turn.
fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (byte, key) in data.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// Appends one final, unmasked data frame (a server does not mask).
pub(crate) fn put_frame(out: &mut Vec<u8>, data: Data, payload: &[u8]) {
    out.extend_from_slice(frame_head(data, payload.len()).as_slice());
    out.extend_from_slice(payload);
}

/// The header of a final, unmasked data frame whose payload is `length` bytes, written by
/// tungstenite's own encoder: 2 to 10 bytes, on the stack.
pub(crate) fn frame_head(data: Data, length: usize) -> FrameHead {
    let header = FrameHeader {
        opcode: OpCode::Data(data),
        ..FrameHeader::default()
    };
    let mut bytes = [0u8; MAX_HEAD];
    let mut rest = &mut bytes[..];
    // An unmasked header fits in MAX_HEAD bytes: writing it cannot fail.
    let _ = header.format(length as u64, &mut rest);
    let len = MAX_HEAD - rest.len();
    FrameHead { bytes, len }
}

/// Longest header of an unmasked frame: 2 bytes, and 8 of length.
const MAX_HEAD: usize = 10;

pub(crate) struct FrameHead {
    bytes: [u8; MAX_HEAD],
    len: usize,
}

impl FrameHead {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A frame as a client sends it: masked.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut masked = payload.to_vec();
        apply_mask(&mut masked, mask);
        out.extend_from_slice(&masked);
        out
    }

    const TEXT: u8 = 1;
    const BINARY: u8 = 2;
    const CONTINUE: u8 = 0;
    const CLOSE: u8 = 8;
    const PING: u8 = 9;

    /// A server websocket over one end of an in-memory pipe, and the client's end.
    fn pair(max: usize) -> (WebSocket<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1 << 20);
        (WebSocket::new(server, max), client)
    }

    async fn send(client: &mut tokio::io::DuplexStream, bytes: &[u8]) {
        client.write_all(bytes).await.unwrap();
    }

    #[tokio::test]
    async fn reads_masked_text_and_binary_and_keeps_no_buffer_between_them() {
        let (mut ws, mut client) = pair(1000);
        let mut both = client_frame(TEXT, true, "héllo".as_bytes());
        both.extend(client_frame(BINARY, true, &[0, 1, 2]));
        send(&mut client, &both).await;
        assert_eq!(
            ws.read().await.unwrap().unwrap(),
            Message::Text("héllo".into())
        );
        assert_eq!(
            ws.read().await.unwrap().unwrap(),
            Message::Binary(vec![0, 1, 2].into())
        );
        assert_eq!(ws.unread.capacity(), 0, "an idle websocket kept a buffer");
    }

    #[tokio::test]
    async fn a_frame_that_arrives_a_byte_at_a_time_is_read_whole() {
        let (mut ws, mut client) = pair(100_000);
        let payload = "x".repeat(70_000);
        let frame = client_frame(TEXT, true, payload.as_bytes());
        let reader = tokio::spawn(async move { ws.read().await.map(|m| m.unwrap()) });
        for chunk in frame.chunks(7_001) {
            send(&mut client, chunk).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(
            reader.await.unwrap(),
            Some(Message::Text(payload.as_str().into()))
        );
        let (mut ws, mut client) = pair(100);
        let frame = client_frame(TEXT, true, b"short");
        let reader = tokio::spawn(async move { ws.read().await.map(|m| m.unwrap()) });
        for byte in frame {
            send(&mut client, &[byte]).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(reader.await.unwrap(), Some(Message::Text("short".into())));
    }

    #[tokio::test]
    async fn fragments_make_one_message_and_pings_may_come_between_them() {
        let (mut ws, mut client) = pair(1000);
        let mut bytes = client_frame(TEXT, false, b"ab");
        bytes.extend(client_frame(PING, true, b"p"));
        bytes.extend(client_frame(CONTINUE, false, b"cd"));
        bytes.extend(client_frame(CONTINUE, true, b"e"));
        send(&mut client, &bytes).await;
        assert_eq!(
            ws.read().await.unwrap().unwrap(),
            Message::Ping(Bytes::from_static(b"p"))
        );
        assert_eq!(
            ws.read().await.unwrap().unwrap(),
            Message::Text("abcde".into())
        );
    }

    #[tokio::test]
    async fn messages_above_the_limit_are_refused_whole_or_in_fragments() {
        let (mut ws, mut client) = pair(10);
        send(&mut client, &client_frame(TEXT, true, &[b'a'; 11])).await;
        assert!(matches!(
            ws.read().await,
            Some(Err(Error::Capacity(CapacityError::MessageTooLong { .. })))
        ));
        let (mut ws, mut client) = pair(10);
        let mut bytes = client_frame(BINARY, false, &[1; 6]);
        bytes.extend(client_frame(CONTINUE, true, &[1; 6]));
        send(&mut client, &bytes).await;
        assert!(matches!(
            ws.read().await,
            Some(Err(Error::Capacity(CapacityError::MessageTooLong { .. })))
        ));
        // The header alone is enough to refuse a frame: its payload is never waited for.
        let (mut ws, mut client) = pair(10);
        let frame = client_frame(BINARY, true, &[1; 1000]);
        send(&mut client, &frame[..20]).await;
        assert!(matches!(
            ws.read().await,
            Some(Err(Error::Capacity(CapacityError::MessageTooLong { .. })))
        ));
    }

    #[tokio::test]
    async fn frames_that_break_the_protocol_are_errors() {
        let unmasked = vec![0x81, 2, b'h', b'i'];
        let mut reserved_bit = client_frame(TEXT, true, b"hi");
        reserved_bit[0] |= 0x40;
        let bad_utf8 = client_frame(TEXT, true, &[0xff, 0xfe]);
        let stray_continuation = client_frame(CONTINUE, true, b"hi");
        let fragmented_ping = client_frame(PING, false, b"");
        let long_ping = client_frame(PING, true, &[0; 126]);
        let unknown_opcode = client_frame(3, true, b"");
        let mut interrupted = client_frame(TEXT, false, b"a");
        interrupted.extend(client_frame(TEXT, true, b"b"));
        let half_close = client_frame(CLOSE, true, &[3]);
        for (name, bytes) in [
            ("unmasked", unmasked),
            ("reserved bit", reserved_bit),
            ("invalid UTF-8", bad_utf8),
            ("continuation without a start", stray_continuation),
            ("fragmented ping", fragmented_ping),
            ("ping above 125 bytes", long_ping),
            ("reserved opcode", unknown_opcode),
            ("a new message inside a fragmented one", interrupted),
            ("one-byte close payload", half_close),
        ] {
            let (mut ws, mut client) = pair(1000);
            send(&mut client, &bytes).await;
            assert!(
                matches!(ws.read().await, Some(Err(_))),
                "{name} was accepted"
            );
        }
    }

    #[tokio::test]
    async fn close_and_end_of_stream() {
        let (mut ws, mut client) = pair(1000);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        send(&mut client, &client_frame(CLOSE, true, &payload)).await;
        let Some(Ok(Message::Close(Some(close)))) = ws.read().await else {
            panic!("no close");
        };
        assert_eq!(close.code, CloseCode::Normal);
        assert_eq!(close.reason, "bye");
        ws.answer_close(Some(close)).await.unwrap();
        let mut answer = [0u8; 7];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']);
        drop(client);
        assert!(ws.read().await.is_none());
    }

    #[tokio::test]
    async fn pongs_and_closes_go_out_unmasked() {
        let (mut ws, mut client) = pair(1000);
        ws.pong(Bytes::from_static(b"p")).await.unwrap();
        ws.close().await.unwrap();
        ws.write_text("hi").await.unwrap();
        let mut out = [0u8; 7];
        client.read_exact(&mut out).await.unwrap();
        assert_eq!(out, [0x8a, 1, b'p', 0x88, 0, 0x81, 2]);
    }

    #[test]
    fn frames_carry_the_shortest_length_that_fits() {
        let head = |len: usize| {
            let mut out = Vec::new();
            put_frame(&mut out, Data::Text, &vec![b'x'; len]);
            out.truncate(out.len() - len);
            out
        };
        assert_eq!(head(0), [0x81, 0]);
        assert_eq!(head(125), [0x81, 125]);
        assert_eq!(head(126), [0x81, 126, 0, 126]);
        assert_eq!(head(0xFFFF), [0x81, 126, 0xFF, 0xFF]);
        assert_eq!(head(0x10000), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let mut out = Vec::new();
        put_frame(&mut out, Data::Binary, b"ab");
        assert_eq!(out, [0x82, 2, b'a', b'b']);
    }
}
