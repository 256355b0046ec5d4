//! Token-aware chunking: about `target_tokens` tokens per chunk, cut on sentence boundaries where
//! possible, consecutive chunks sharing up to `overlap_tokens` tokens of whole sentences.

use tokenizers::Tokenizer;

use crate::InferenceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    pub target_tokens: usize,
    pub overlap_tokens: usize,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            target_tokens: 200,
            overlap_tokens: 40,
        }
    }
}

/// A piece of a document: its text and byte range in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub tokens: usize,
    /// The first and last page the chunk is on, when the text has pages: a form feed (U+000C)
    /// starts a new one, as in the text of a PDF.
    pub pages: Option<(u32, u32)>,
}

/// What starts a new page in a text (a form feed, as pdftotext and shoal's PDF reader write).
pub const PAGE_BREAK: char = '\u{c}';

#[derive(Clone)]
pub struct Chunker {
    tokenizer: Tokenizer,
    params: ChunkerParams,
}

/// A run of tokens that is never split further: a sentence, or a window of an over-long sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    start: usize,
    end: usize,
    tokens: usize,
}

impl Chunker {
    /// `tokenizer` must not truncate (see [`crate::Embedder::counting_tokenizer`]).
    pub fn new(tokenizer: Tokenizer, params: ChunkerParams) -> Chunker {
        let target = params.target_tokens.max(1);
        Chunker {
            tokenizer,
            params: ChunkerParams {
                target_tokens: target,
                overlap_tokens: params.overlap_tokens.min(target / 2),
            },
        }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Number of tokens in `text`, without special tokens.
    pub fn count_tokens(&self, text: &str) -> Result<usize, InferenceError> {
        Ok(self.encode_offsets(text)?.len())
    }

    fn encode_offsets(&self, text: &str) -> Result<Vec<(usize, usize)>, InferenceError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        Ok(enc.get_offsets().to_vec())
    }

    pub fn chunk(&self, text: &str) -> Result<Vec<Chunk>, InferenceError> {
        let offsets = self.encode_offsets(text)?;
        let pieces = pieces(text, &offsets, self.params);
        let breaks: Vec<usize> = text.match_indices(PAGE_BREAK).map(|(i, _)| i).collect();
        // the page of what comes before byte `at`: one more than the page breaks before it
        let page = |at: usize| 1 + breaks.partition_point(|&b| b < at) as u32;
        Ok(pack(&pieces, self.params)
            .into_iter()
            .filter_map(|(start, end, tokens)| {
                let (start, end) = trim(text, start, end);
                (start < end).then(|| Chunk {
                    text: text[start..end].to_string(),
                    start,
                    end,
                    tokens,
                    // a trimmed chunk neither starts nor ends with a break: its first byte is on
                    // the page of the breaks before `start`, its last on that of those before `end`
                    pages: (!breaks.is_empty()).then(|| (page(start), page(end))),
                })
            })
            .collect())
    }
}

/// Byte ranges of sentences; together they cover `text`. A sentence ends after `.`, `!` or `?`
/// (and closing quotes or brackets) followed by white space, after CJK full stops, and at line
/// and page breaks.
fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let mut end = None;
        match c {
            '\n' | PAGE_BREAK => end = Some(i + 1),
            '。' | '！' | '？' => end = Some(i + c.len_utf8()),
            '.' | '!' | '?' => {
                let mut j = i + 1;
                while let Some(&(k, n)) = chars.peek() {
                    if matches!(n, '"' | '\'' | ')' | ']' | '”' | '’' | '.' | '!' | '?') {
                        chars.next();
                        j = k + n.len_utf8();
                    } else {
                        break;
                    }
                }
                match chars.peek() {
                    Some(&(_, n)) if n.is_whitespace() => end = Some(j),
                    None => end = Some(j),
                    _ => {}
                }
            }
            _ => {}
        }
        if let Some(e) = end {
            // Let the sentence keep its trailing spaces so spans stay contiguous.
            let mut e = e;
            while let Some(&(k, n)) = chars.peek() {
                if n.is_whitespace() && n != '\n' && n != PAGE_BREAK {
                    chars.next();
                    e = k + n.len_utf8();
                } else {
                    break;
                }
            }
            spans.push((start, e));
            start = e;
        }
    }
    if start < text.len() {
        spans.push((start, text.len()));
    }
    spans
}

/// Turn sentences into pieces of at most `target_tokens` tokens each.
fn pieces(text: &str, offsets: &[(usize, usize)], params: ChunkerParams) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut t = 0; // first token not yet assigned
    let mut taken = 0; // end of the last piece: a piece never starts before it
    for (s, e) in sentence_spans(text) {
        let s = s.max(taken);
        let first = t;
        while t < offsets.len() && offsets[t].0 < e {
            t += 1;
        }
        let toks = &offsets[first..t];
        if toks.is_empty() {
            continue;
        }
        // A token that begins in this sentence may end past it, where the tokenizer's
        // normaliser dropped what split them (a form feed or another control character between
        // two letters): the sentence keeps the whole token.
        let e = e.max(toks[toks.len() - 1].1);
        taken = e;
        if toks.len() <= params.target_tokens {
            out.push(Piece {
                start: s,
                end: e,
                tokens: toks.len(),
            });
            continue;
        }
        // An over-long sentence: overlapping windows of tokens.
        let step = (params.target_tokens - params.overlap_tokens).max(1);
        let mut w = 0;
        loop {
            let last = (w + params.target_tokens).min(toks.len());
            let start = if w == 0 { s } else { toks[w].0 };
            let end = if last == toks.len() { e } else { toks[last].0 };
            out.push(Piece {
                start,
                end,
                tokens: last - w,
            });
            if last == toks.len() {
                break;
            }
            w += step;
        }
    }
    out
}

/// Greedily pack pieces into chunks of at most `target_tokens`, carrying whole trailing pieces
/// worth at most `overlap_tokens` into the next chunk. Returns (start, end, tokens).
fn pack(pieces: &[Piece], params: ChunkerParams) -> Vec<(usize, usize, usize)> {
    let mut chunks = Vec::new();
    let mut cur: Vec<Piece> = Vec::new();
    let mut cur_tokens = 0;
    let mut fresh = 0; // pieces in `cur` that no earlier chunk holds
    for &p in pieces {
        if !cur.is_empty() && cur_tokens + p.tokens > params.target_tokens {
            chunks.push((cur[0].start, cur[cur.len() - 1].end, cur_tokens));
            // overlap: trailing whole pieces, within budget and leaving room for `p`
            let mut keep = Vec::new();
            let mut kept = 0;
            for q in cur.iter().rev() {
                if kept + q.tokens > params.overlap_tokens
                    || kept + q.tokens + p.tokens > params.target_tokens
                {
                    break;
                }
                kept += q.tokens;
                keep.push(*q);
            }
            keep.reverse();
            cur = keep;
            cur_tokens = kept;
            fresh = 0;
        }
        cur.push(p);
        cur_tokens += p.tokens;
        fresh += 1;
    }
    if !cur.is_empty() && fresh > 0 {
        chunks.push((cur[0].start, cur[cur.len() - 1].end, cur_tokens));
    }
    chunks
}

fn trim(text: &str, mut start: usize, mut end: usize) -> (usize, usize) {
    let s = &text[start..end];
    start += s.len() - s.trim_start().len();
    end -= s.len() - s.trim_end().len();
    (start, end.max(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_on_punctuation_and_lines() {
        let t = "One. Two? \"Three!\" Four\nFive 3.14 six. 東京。終";
        let spans: Vec<&str> = sentence_spans(t).iter().map(|&(s, e)| &t[s..e]).collect();
        assert_eq!(
            spans,
            vec![
                "One. ",
                "Two? ",
                "\"Three!\" ",
                "Four\n",
                "Five 3.14 six. ",
                "東京。",
                "終"
            ]
        );
        assert_eq!(spans.concat(), t);
    }

    fn piece(start: usize, tokens: usize) -> Piece {
        Piece {
            start,
            end: start + 1,
            tokens,
        }
    }

    #[test]
    fn packing_respects_target_and_overlaps_whole_pieces() {
        let params = ChunkerParams {
            target_tokens: 10,
            overlap_tokens: 4,
        };
        let ps: Vec<Piece> = (0..6).map(|i| piece(i, 3)).collect();
        let chunks = pack(&ps, params);
        // [0,1,2] (9) -> overlap [2] -> [2,3,4] (9) -> overlap [4] -> [4,5] (6)
        assert_eq!(chunks, vec![(0, 3, 9), (2, 5, 9), (4, 6, 6)]);
        assert!(chunks.iter().all(|c| c.2 <= 10));
        // a final overlap-only chunk is not emitted twice
        let chunks = pack(&[piece(0, 8), piece(1, 3)], params);
        assert_eq!(chunks, vec![(0, 1, 8), (1, 2, 3)]);
    }

    #[test]
    fn a_token_across_a_sentence_break_stays_in_one_piece() {
        // "a\u{c}b c": the tokenizer drops the form feed and reads `a\u{c}b` as one token
        let text = "a\u{c}b c";
        let offsets = vec![(0, 3), (4, 5)];
        let params = ChunkerParams {
            target_tokens: 1,
            overlap_tokens: 0,
        };
        let ps = pieces(text, &offsets, params);
        let ranges: Vec<(usize, usize, usize)> =
            ps.iter().map(|p| (p.start, p.end, p.tokens)).collect();
        // the second piece starts after the first one's token, not inside it
        assert_eq!(ranges, vec![(0, 3, 1), (3, 5, 1)]);
    }

    #[test]
    fn long_sentences_become_overlapping_windows() {
        // 25 one-byte "tokens" and no sentence break
        let text = "a".repeat(25);
        let offsets: Vec<(usize, usize)> = (0..25).map(|i| (i, i + 1)).collect();
        let params = ChunkerParams {
            target_tokens: 10,
            overlap_tokens: 2,
        };
        let ps = pieces(&text, &offsets, params);
        let ranges: Vec<(usize, usize, usize)> =
            ps.iter().map(|p| (p.start, p.end, p.tokens)).collect();
        assert_eq!(ranges, vec![(0, 10, 10), (8, 18, 10), (16, 25, 9)]);
    }

    /// Awkward text, as users upload it: no sentence breaks, very long lines, Cyrillic, CJK,
    /// emoji and combining marks, tables of pipes and tabs, runs of punctuation or space.
    fn awkward_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            "[a-z]{1,12}",
            "[а-яё]{1,10}",
            "[\\u{4e00}-\\u{4fff}]{1,20}",
            "[\\u{3040}-\\u{30ff}]{1,8}",
            "[😀-🙏]{1,3}",
            "e\\u{0301}",
            Just(" ".to_string()),
            Just("\n".to_string()),
            Just("\t".to_string()),
            Just("\u{c}".to_string()),
            Just(" | ".to_string()),
            Just("|---|---|\n".to_string()),
            Just(". ".to_string()),
            Just("。".to_string()),
            Just("?!...".to_string()),
            "[0-9]{1,9}",
            "x{50,400}",
        ];
        proptest::collection::vec(piece, 0..300).prop_map(|v| v.concat())
    }

    #[test]
    fn any_text_chunks_into_valid_ranges_that_cover_every_token() {
        use proptest::prelude::*;
        let dir = std::env::var_os("SHOAL_MODEL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../models/all-MiniLM-L6-v2")
            });
        let tokenizer = crate::ModelFiles::locate(&dir)
            .and_then(|f| f.read_tokenizer(None))
            .expect("the MiniLM tokenizer (scripts/fetch-model.sh)");
        let params = ChunkerParams {
            target_tokens: 40,
            overlap_tokens: 8,
        };
        let chunker = Chunker::new(tokenizer, params);
        proptest!(ProptestConfig::with_cases(200), |(text in awkward_text())| {
            let chunks = chunker.chunk(&text).unwrap();
            // the pieces chunks are packed from are in order
            let offsets = chunker.encode_offsets(&text).unwrap();
            for w in pieces(&text, &offsets, params).windows(2) {
                prop_assert!(w[0].start <= w[1].start && w[0].end <= w[1].end, "{:?} then {:?}", w[0], w[1]);
            }
            let mut last_start = 0;
            for c in &chunks {
                // a real, trimmed, non-empty range of the text, in order
                prop_assert!(c.start < c.end && c.end <= text.len());
                prop_assert!(text.is_char_boundary(c.start) && text.is_char_boundary(c.end));
                prop_assert_eq!(&text[c.start..c.end], c.text.as_str());
                prop_assert_eq!(c.text.trim(), c.text.as_str());
                prop_assert!(c.start >= last_start);
                last_start = c.start;
                // within the budget, as the tokenizer counts it
                prop_assert!(c.tokens >= 1 && c.tokens <= params.target_tokens, "{} tokens", c.tokens);
                // its pages: one more than the page breaks before its first and its last byte
                let page = |at: usize| 1 + text[..at].matches(PAGE_BREAK).count() as u32;
                if text.contains(PAGE_BREAK) {
                    let last = text[..c.end].char_indices().last().map_or(0, |(i, _)| i);
                    prop_assert_eq!(c.pages, Some((page(c.start), page(last))));
                } else {
                    prop_assert_eq!(c.pages, None);
                }
            }
            // every token of the text is in some chunk
            for (s, e) in chunker.encode_offsets(&text).unwrap() {
                prop_assert!(
                    chunks.iter().any(|c| c.start <= s && e <= c.end),
                    "token {:?} at {}..{} is in no chunk", &text[s..e], s, e
                );
            }
            // no tokens, no chunks
            if text.trim().is_empty() {
                prop_assert!(chunks.is_empty());
            }
        });
    }
}
