//! Which files an scp or sftp session touched, read from what the client sends. Pure.

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

/// The entry for one complete packet (type byte onwards), if it touches a file.
fn describe(packet: &[u8]) -> Option<String> {
    let (&kind, rest) = packet.split_first()?;
    let (_id, rest) = read_u32(rest)?;
    let (path, rest) = read_string(rest)?;
    Some(match kind {
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
    })
}

impl SftpTracker {
    /// Feeds client bytes; returns the file operations completed by them.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let need = if self.buf.len() < 4 {
                4 - self.buf.len()
            } else {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if len > MAX_PARSED {
                    // A data write: nothing to name in it, so pass over it unbuffered.
                    self.skip = len - (self.buf.len() - 4);
                    self.buf.clear();
                    continue;
                }
                4 + len - self.buf.len()
            };
            let n = need.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if len <= MAX_PARSED && self.buf.len() == 4 + len {
                    out.extend(describe(&self.buf[4..]));
                    self.buf.clear();
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
        let mut seen = Vec::new();
        for chunk in stream.chunks(7) {
            seen.extend(tracker.feed(chunk));
        }
        assert_eq!(seen, ["read /etc/motd", "rename /a -> /b", "write /up"]);
        assert!(
            SftpTracker::default().feed(&[0xff; 64]).is_empty(),
            "garbage names nothing"
        );
    }
}
