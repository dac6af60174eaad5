//! Which files an scp or sftp session touched, read from what the client sends, and the
//! SFTP framing the bastion needs to refuse one operation and answer it itself. Pure.

/// For `scp -t DIR` (upload) or `scp -f FILE...` (download), the entries to record.
pub fn scp_files(command: &str) -> Vec<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    if words.first().map(|w| w.rsplit('/').next() == Some("scp")) != Some(true) {
        return Vec::new();
    }
    let op = if words.contains(&"-t") {
        "upload"
    } else if words.contains(&"-f") {
        "download"
    } else {
        return Vec::new();
    };
    words[1..]
        .iter()
        .filter(|w| !w.starts_with('-'))
        .map(|path| format!("{op} {path}"))
        .collect()
}

/// Largest SFTP packet parsed; bigger ones (data writes) are skipped over, not buffered.
const MAX_PARSED: usize = 64 * 1024;
/// The one request type allowed to be bigger: data written to an open handle.
const SSH_FXP_WRITE: u8 = 6;

/// What a chunk of the client's SFTP stream becomes: bytes to pass on as they are, and each
/// complete packet that names a file operation (held until complete, so it can be kept
/// back whole when a rule refuses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Pass(Vec<u8>),
    Op {
        /// The whole packet, length included.
        packet: Vec<u8>,
        /// Its request id, which the answer must carry.
        id: u32,
        /// The operation, as `op path`.
        op: String,
    },
    /// A request bigger than the bastion reads ([`MAX_PARSED`]) that is not a data write:
    /// it could hide a file operation (an open with kilobytes of attributes), so the session
    /// ends rather than pass it unchecked. Its type and length.
    Oversized {
        kind: u8,
        len: usize,
    },
}

/// SSH_FXP_STATUS with SSH_FX_PERMISSION_DENIED for request `id`, saying `why`: how the
/// bastion refuses one SFTP operation without ending the session.
pub fn sftp_denied(id: u32, why: &str) -> Vec<u8> {
    let mut body = vec![101];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&3u32.to_be_bytes());
    body.extend_from_slice(&(why.len() as u32).to_be_bytes());
    body.extend_from_slice(why.as_bytes());
    body.extend_from_slice(&2u32.to_be_bytes());
    body.extend_from_slice(b"en");
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Follows packet boundaries in the server-to-client half of an SFTP stream (lengths only),
/// so an answer of the bastion's goes in between two of the target's packets.
#[derive(Debug, Default)]
pub struct SftpFrames {
    /// Length bytes of the next packet seen so far.
    head: Vec<u8>,
    /// Bytes of the current packet still to come.
    left: usize,
}

impl SftpFrames {
    /// Feeds server bytes.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                continue;
            }
            let n = (4 - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() == 4 {
                self.left = u32::from_be_bytes(self.head[..].try_into().expect("4 bytes")) as usize;
                self.head.clear();
            }
        }
    }

    /// Between two packets.
    pub fn at_boundary(&self) -> bool {
        self.left == 0 && self.head.is_empty()
    }
}

/// Follows the client-to-server half of an SFTP stream and names the file operations in it.
#[derive(Debug, Default)]
pub struct SftpTracker {
    /// Bytes of a packet not yet complete.
    buf: Vec<u8>,
    /// Bytes of a large packet still to skip.
    skip: usize,
}

fn read_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = b.split_at_checked(4)?;
    Some((u32::from_be_bytes(head.try_into().ok()?), rest))
}

fn read_string(b: &[u8]) -> Option<(String, &[u8])> {
    let (len, rest) = read_u32(b)?;
    let (s, rest) = rest.split_at_checked(len as usize)?;
    Some((String::from_utf8_lossy(s).into_owned(), rest))
}

/// The request id and entry of one complete packet (type byte onwards), if it touches a file.
fn describe(packet: &[u8]) -> Option<(u32, String)> {
    let (&kind, rest) = packet.split_first()?;
    let (id, rest) = read_u32(rest)?;
    let (path, rest) = read_string(rest)?;
    let op = match kind {
        3 => {
            let (flags, _) = read_u32(rest)?;
            let op = match (flags & 1 != 0, flags & 2 != 0) {
                (_, true) => "write",
                _ => "read",
            };
            format!("{op} {path}")
        }
        11 => format!("list {path}"),
        13 => format!("remove {path}"),
        14 => format!("mkdir {path}"),
        15 => format!("rmdir {path}"),
        18 => format!("rename {path} -> {}", read_string(rest)?.0),
        20 => format!("symlink {path} -> {}", read_string(rest)?.0),
        9 => format!("setstat {path}"),
        _ => return None,
    };
    Some((id, op))
}

impl SftpTracker {
    /// Feeds client bytes; returns what to pass on and the file operations they complete.
    /// A packet of at most 64 KiB is held until it is complete; a bigger one (a data write)
    /// passes as it comes, unbuffered.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        let pass = |out: &mut Vec<Piece>, bytes: &[u8]| match out.last_mut() {
            Some(Piece::Pass(p)) => p.extend_from_slice(bytes),
            _ => out.push(Piece::Pass(bytes.to_vec())),
        };
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                pass(&mut out, &data[..n]);
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            // Fills `buf` up to `upto` bytes from `data`, as far as it goes.
            let mut take = |buf: &mut Vec<u8>, upto: usize| {
                let n = upto.saturating_sub(buf.len()).min(data.len());
                buf.extend_from_slice(&data[..n]);
                data = &data[n..];
            };
            if self.buf.len() < 4 {
                take(&mut self.buf, 4);
                continue;
            }
            let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
            if len > MAX_PARSED {
                if self.buf.len() < 5 {
                    take(&mut self.buf, 5);
                    continue;
                }
                if self.buf[4] != SSH_FXP_WRITE {
                    out.push(Piece::Oversized {
                        kind: self.buf[4],
                        len,
                    });
                    return out;
                }
                // A data write: nothing to name in it, so pass over it unbuffered.
                self.skip = len - (self.buf.len() - 4);
                pass(&mut out, &self.buf);
                self.buf.clear();
                continue;
            }
            take(&mut self.buf, 4 + len);
            if self.buf.len() == 4 + len {
                let packet = std::mem::take(&mut self.buf);
                match describe(&packet[4..]) {
                    Some((id, op)) => out.push(Piece::Op { packet, id, op }),
                    None => pass(&mut out, &packet),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, strings: &[&str], tail: &[u8]) -> Vec<u8> {
        let mut body = vec![kind, 0, 0, 0, 7];
        for s in strings {
            body.extend_from_slice(&(s.len() as u32).to_be_bytes());
            body.extend_from_slice(s.as_bytes());
        }
        body.extend_from_slice(tail);
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[test]
    fn scp_commands() {
        let check = |cmd: &str, want: &[&str]| assert_eq!(scp_files(cmd), want, "{cmd}");
        check("scp -t /tmp/x", &["upload /tmp/x"]);
        check(
            "scp -v -f /etc/hosts /etc/passwd",
            &["download /etc/hosts", "download /etc/passwd"],
        );
        check("/usr/bin/scp -d -t -- /srv", &["upload /srv"]);
        check("ls -t /tmp", &[]);
        check("", &[]);
    }

    #[test]
    fn sftp_operations_across_chunk_boundaries() {
        let mut stream = packet(3, &["/etc/motd"], &[0, 0, 0, 1, 0, 0, 0, 0]);
        stream.extend(packet(6, &[], &[]));
        // A large write, skipped without being buffered.
        let mut big = packet(6, &["handle"], &vec![0u8; 200_000]);
        stream.append(&mut big);
        stream.extend(packet(18, &["/a", "/b"], &[]));
        stream.extend(packet(3, &["/up"], &[0, 0, 0, 0x1a, 0, 0, 0, 0]));
        let mut tracker = SftpTracker::default();
        let (mut seen, mut passed) = (Vec::new(), Vec::new());
        for chunk in stream.chunks(7) {
            for piece in tracker.feed(chunk) {
                match piece {
                    Piece::Pass(bytes) => passed.extend(bytes),
                    Piece::Op { packet, id, op } => {
                        assert_eq!(id, 7);
                        passed.extend(packet);
                        seen.push(op);
                    }
                    Piece::Oversized { .. } => panic!("only a write is big here"),
                }
            }
        }
        assert_eq!(seen, ["read /etc/motd", "rename /a -> /b", "write /up"]);
        assert_eq!(passed, stream, "every byte passes, in order");
        // An open padded past 64 KiB (attributes can be long) is not passed unchecked.
        let padded = packet(3, &["/etc/x"], &vec![0u8; 70_000]);
        let mut tracker = SftpTracker::default();
        let pieces: Vec<Piece> = padded.chunks(3).flat_map(|c| tracker.feed(c)).collect();
        assert_eq!(
            pieces.last(),
            Some(&Piece::Oversized {
                kind: 3,
                len: padded.len() - 4
            })
        );
        let garbage = SftpTracker::default().feed(&[0xff; 64]);
        assert!(
            garbage.iter().all(|p| !matches!(p, Piece::Op { .. })),
            "garbage names nothing"
        );
    }

    #[test]
    fn a_refusal_is_a_status_packet_and_server_frames_are_followed() {
        let denied = sftp_denied(9, "no");
        assert_eq!(
            denied,
            [
                0, 0, 0, 21, 101, 0, 0, 0, 9, 0, 0, 0, 3, 0, 0, 0, 2, b'n', b'o', 0, 0, 0, 2, b'e',
                b'n'
            ]
        );
        let mut frames = SftpFrames::default();
        assert!(frames.at_boundary());
        let two = [denied.clone(), packet(102, &["h"], &[])].concat();
        for (i, chunk) in two.chunks(5).enumerate() {
            frames.feed(chunk);
            let end = (i + 1) * 5 >= two.len() || (i + 1) * 5 == denied.len();
            assert_eq!(frames.at_boundary(), end, "after chunk {i}");
        }
    }
}
