//! WebSocket frame boundaries (RFC 6455 section 5.2), followed on the bytes a tunnel copies,
//! so that a close frame sandgate adds at shutdown goes between two frames, never inside one.
//! Only the frame heads are read; payloads (masked or compressed) are skipped by length.

/// Where the copied bytes are in the WebSocket framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frames {
    /// Bytes of the current frame head seen so far (0: at a boundary).
    head: [u8; 14],
    have: u8,
    /// Payload bytes still to come of the current frame.
    left: u64,
    /// A close frame went by.
    closed: bool,
}

impl Default for Frames {
    fn default() -> Self {
        Self::new()
    }
}

impl Frames {
    /// At the start of a stream: a boundary.
    pub const fn new() -> Self {
        Self {
            head: [0; 14],
            have: 0,
            left: 0,
            closed: false,
        }
    }

    /// Whether a close frame went by: this side ended the WebSocket session.
    pub fn saw_close(&self) -> bool {
        self.closed
    }

    /// Whether the bytes seen so far end exactly at the end of a frame.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Follows `bytes`, the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            // In a frame head: take bytes until it is complete.
            let need = self.head_len();
            let take = (need - usize::from(self.have)).min(bytes.len());
            let at = usize::from(self.have);
            self.head[at..at + take].copy_from_slice(&bytes[..take]);
            self.have += take as u8;
            bytes = &bytes[take..];
            // The length is known once the second byte is in; it may ask for more.
            if usize::from(self.have) == self.head_len() {
                self.left = self.payload_len();
                self.closed |= self.head[0] & 0x0f == 0x8;
                self.have = 0;
            }
        }
    }

    /// The length of the current head, as far as its bytes tell (2 until the second byte).
    fn head_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let b1 = self.head[1];
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }
}

/// A close frame with status 1001 (going away), as a server sends it: unmasked.
pub const GOING_AWAY_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// The same close frame as a client sends it (to a backend): masked with `key`.
pub fn going_away_to_server(key: [u8; 4]) -> [u8; 8] {
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        0x03 ^ key[0],
        0xE9 ^ key[1],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a peer writes it: `mask` for client frames.
    fn frame(payload: &[u8], mask: bool) -> Vec<u8> {
        let mut out = vec![0x82];
        let m = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if mask {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn boundaries_of_every_length_form_in_any_split() {
        for mask in [false, true] {
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            for len in [0usize, 1, 125, 126, 300, 65_535, 65_536, 70_000] {
                stream.extend(frame(&vec![7u8; len], mask));
                ends.push(stream.len());
            }
            for chunk in [1usize, 3, 7, 1000, stream.len()] {
                let mut f = Frames::new();
                let mut at = 0;
                for piece in stream.chunks(chunk) {
                    f.feed(piece);
                    at += piece.len();
                    assert_eq!(
                        f.at_boundary(),
                        ends.contains(&at),
                        "mask {mask}, chunk {chunk}, at {at}"
                    );
                }
                assert!(f.at_boundary());
            }
        }
    }

    #[test]
    fn the_masked_close_frame_unmasks_to_1001() {
        let key = [0x11, 0x22, 0x33, 0x44];
        let f = going_away_to_server(key);
        assert_eq!(f[0], 0x88);
        assert_eq!(f[1] & 0x7f, 2);
        assert_eq!([f[6] ^ key[0], f[7] ^ key[1]], [0x03, 0xE9]);
        let mut t = Frames::new();
        assert!(!t.saw_close());
        t.feed(&f);
        assert!(t.at_boundary());
        assert!(t.saw_close());
    }
}
