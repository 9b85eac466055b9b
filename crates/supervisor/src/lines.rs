//! Reading newline-separated lines with a bound on their length, as bytes: what another process
//! writes (IPC messages, a worker's stdout) may be endless or not UTF-8, and neither may cost
//! the master more than the bound or stop it reading.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line read by [`BoundedLines`], without its newline.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Complete(Vec<u8>),
    /// The line's first `max` bytes; the rest of it, up to its newline, is skipped without
    /// being kept.
    Overlong(Vec<u8>),
}

/// Lines of at most `max` bytes from `reader`.
pub struct BoundedLines<R> {
    reader: R,
    max: usize,
    /// Inside the tail of an over-long line: skip up to its newline.
    skipping: bool,
}

impl<R: AsyncBufRead + Unpin> BoundedLines<R> {
    pub fn new(reader: R, max: usize) -> Self {
        BoundedLines {
            reader,
            max,
            skipping: false,
        }
    }

    /// The next line, or `None` at the end of the stream. A last line without a newline
    /// counts as complete.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut line = Vec::new();
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok((!line.is_empty()).then_some(Line::Complete(line)));
            }
            let newline = available.iter().position(|b| *b == b'\n');
            if self.skipping {
                let used = newline.map_or(available.len(), |at| at + 1);
                self.skipping = newline.is_none();
                self.reader.consume(used);
                continue;
            }
            let room = self.max - line.len();
            match newline {
                Some(at) if at <= room => {
                    line.extend_from_slice(&available[..at]);
                    self.reader.consume(at + 1);
                    return Ok(Some(Line::Complete(line)));
                }
                _ if available.len() > room => {
                    line.extend_from_slice(&available[..room]);
                    self.reader.consume(room);
                    self.skipping = true;
                    return Ok(Some(Line::Overlong(line)));
                }
                _ => {
                    let used = available.len();
                    line.extend_from_slice(available);
                    self.reader.consume(used);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all_lines(input: &[u8], max: usize) -> Vec<Line> {
        // A tiny buffer, so lines span several reads.
        let reader = tokio::io::BufReader::with_capacity(3, input);
        let mut lines = BoundedLines::new(reader, max);
        let mut all = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            all.push(line);
        }
        all
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_their_rest_skipped() {
        let lines = all_lines(b"short\nexactly8\n0123456789abc\n\xff\xfeok\nlast", 9).await;
        assert_eq!(
            lines,
            [
                Line::Complete(b"short".to_vec()),
                Line::Complete(b"exactly8".to_vec()),
                Line::Overlong(b"012345678".to_vec()),
                Line::Complete(b"\xff\xfeok".to_vec()),
                Line::Complete(b"last".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_bound_is_whole() {
        assert_eq!(
            all_lines(b"123\n1234\n", 3).await,
            [
                Line::Complete(b"123".to_vec()),
                Line::Overlong(b"123".to_vec())
            ]
        );
    }
}
