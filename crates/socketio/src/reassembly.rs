//! Binary packets arrive in pieces: a text header that announces N attachments, then N binary
//! messages. Everything a connection holds while it waits for them is bounded here, so that a
//! client cannot make the server keep what it sends (the "attachment bomb": a header announcing
//! a thousand attachments, then a megabyte per message).

use bytes::Bytes;

use crate::packet::Packet;

/// What one binary packet may cost, header and attachments together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttachmentLimits {
    /// Attachments one packet may announce.
    pub(crate) max_attachments: usize,
    /// Bytes of the whole packet: header text plus every attachment.
    pub(crate) max_bytes: usize,
}

/// Why a piece of a binary packet was refused; the connection is closed for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("the packet announces {announced} attachments, more than the {max} allowed (max_attachments)")]
    TooManyAttachments { announced: usize, max: usize },
    #[error("the packet with its attachments exceeds {max} bytes (max_payload)")]
    TooLarge { max: usize },
    #[error("a binary attachment without a packet waiting for it")]
    Unexpected,
    #[error("a text packet while binary attachments were expected")]
    MissingAttachment,
}

impl Refusal {
    pub(crate) fn disconnect_reason(&self) -> engineio::DisconnectReason {
        match self {
            Refusal::TooLarge { .. } => engineio::DisconnectReason::PayloadTooLarge,
            _ => engineio::DisconnectReason::PacketParsing,
        }
    }
}

/// The binary packet a connection is receiving, if any.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    /// The header and the attachments so far, and their size in bytes. Boxed: every
    /// connection has a `Reassembly`, few ever wait for attachments.
    waiting: Option<Box<(Packet, usize)>>,
}

impl Reassembly {
    /// Whether attachments are due (a text packet now breaks the protocol).
    pub(crate) fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Checks a text packet's place: refused while attachments are due.
    pub(crate) fn expect_text(&self) -> Result<(), Refusal> {
        if self.is_waiting() {
            Err(Refusal::MissingAttachment)
        } else {
            Ok(())
        }
    }

    /// Starts waiting for the attachments of `packet`, whose header text was `header_len` bytes.
    pub(crate) fn start(
        &mut self,
        packet: Packet,
        header_len: usize,
        limits: AttachmentLimits,
    ) -> Result<(), Refusal> {
        if packet.attachments > limits.max_attachments {
            return Err(Refusal::TooManyAttachments {
                announced: packet.attachments,
                max: limits.max_attachments,
            });
        }
        if header_len > limits.max_bytes {
            return Err(Refusal::TooLarge {
                max: limits.max_bytes,
            });
        }
        self.waiting = Some(Box::new((packet, header_len)));
        Ok(())
    }

    /// Adds one attachment; the packet, once it is complete.
    pub(crate) fn attach(
        &mut self,
        data: Bytes,
        limits: AttachmentLimits,
    ) -> Result<Option<Packet>, Refusal> {
        let Some(mut waiting) = self.waiting.take() else {
            return Err(Refusal::Unexpected);
        };
        let (packet, bytes) = &mut *waiting;
        *bytes = bytes.saturating_add(data.len());
        if *bytes > limits.max_bytes {
            return Err(Refusal::TooLarge {
                max: limits.max_bytes,
            });
        }
        packet.binary.push(data);
        if packet.is_complete() {
            return Ok(Some(waiting.0));
        }
        self.waiting = Some(waiting);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: AttachmentLimits = AttachmentLimits {
        max_attachments: 2,
        max_bytes: 100,
    };

    fn header(attachments: usize) -> (Packet, usize) {
        let text = format!("5{attachments}-[\"up\",{{\"_placeholder\":true,\"num\":0}}]");
        (Packet::decode(&text).unwrap(), text.len())
    }

    #[test]
    fn completes_a_packet_within_the_limits() {
        let mut reassembly = Reassembly::default();
        let (packet, len) = header(2);
        reassembly.start(packet, len, LIMITS).unwrap();
        assert_eq!(reassembly.expect_text(), Err(Refusal::MissingAttachment));
        assert!(reassembly
            .attach(Bytes::from_static(b"ab"), LIMITS)
            .unwrap()
            .is_none());
        let packet = reassembly
            .attach(Bytes::from_static(b"cd"), LIMITS)
            .unwrap()
            .expect("complete");
        assert_eq!(packet.binary.len(), 2);
        assert!(!reassembly.is_waiting());
    }

    #[test]
    fn refuses_more_attachments_than_allowed() {
        let (packet, len) = header(3);
        assert_eq!(
            Reassembly::default().start(packet, len, LIMITS),
            Err(Refusal::TooManyAttachments {
                announced: 3,
                max: 2
            })
        );
    }

    #[test]
    fn bounds_the_whole_packet_not_each_attachment() {
        let mut reassembly = Reassembly::default();
        let (packet, len) = header(2);
        reassembly.start(packet, len, LIMITS).unwrap();
        let most = Bytes::from(vec![0u8; 70]);
        assert!(reassembly.attach(most.clone(), LIMITS).is_err());
        assert!(!reassembly.is_waiting(), "nothing is kept after a refusal");
        assert_eq!(
            Reassembly::default().attach(most, LIMITS).unwrap_err(),
            Refusal::Unexpected
        );
    }
}
