//! Keyword search: BM25 over the chunks' text, with tantivy.
//!
//! Derived state like the graph: built from the points' text when a shard opens, kept up to
//! date by the same inserts and deletes, never persisted (the store is the truth). The text is
//! indexed, not stored (the store has it): per chunk, its terms with their frequencies and its
//! length, and the point id as a fast field, which a filter's matches are checked against.
//!
//! Text is cut into words at anything that is not a letter or a digit, lower-cased and folded to
//! ASCII ("Café" and "cafe" match); words of 40 bytes or more are dropped. Chinese, Japanese and
//! Korean are written without spaces between words (Korean between phrases): a run of their
//! characters is cut into overlapping pairs ("東京都" gives "東京" and "京都"; a lone character is
//! a word of its own), as Elasticsearch's `cjk` analyzer and Lucene's CJK bigram filter do, so a
//! query's words of two characters or more match inside a longer run (a word of one character is
//! found only where it stands alone, as with that analyzer; half-width and full-width kana are
//! not folded into each other). A query is analysed the same way and matches chunks
//! holding any of its words (its first 1,024), ranked by BM25 (no query syntax: a user's quotes,
//! colons or `AND`s are words or nothing, never an error). Thai, Lao, Khmer and Burmese, also
//! written without spaces, are still cut only at punctuation (that needs a dictionary): keyword
//! search serves them poorly (vector search does not care).

use std::sync::Arc;

use parking_lot::Mutex;
use tantivy::collector::{FilterCollector, TopDocs};
use tantivy::indexer::{IndexWriterOptions, LogMergePolicy};
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, TextAnalyzer, Token, TokenStream, Tokenizer,
};
use tantivy::{
    doc, Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, TantivyDocument, Term,
};

use crate::{IndexError, PointId};

const TOKENIZER: &str = "shoal_words";
/// tantivy's smallest indexing budget.
const WRITER_BYTES: usize = 15_000_000;
/// Words of a query that count (as Elasticsearch caps a query's clauses at 1,024).
pub(crate) const MAX_QUERY_WORDS: usize = 1_024;
/// A segment is merged away once this share of its chunks are deleted, so that deleted chunks
/// neither hold memory nor weigh in the BM25 statistics for long (tantivy's default waits for
/// all of them).
const DELETED_RATIO_BEFORE_MERGE: f32 = 0.2;

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(WordsAndPairs::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// Chinese, Japanese and Korean characters (Han, kana, Hangul, their iteration marks and
/// half-width forms): runs of them are cut into pairs.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF // Hangul Jamo
        | 0x2E80..=0x2FDF // CJK and Kangxi radicals
        | 0x3005..=0x3007 // 々 〆 〇
        | 0x3021..=0x3029 // Hangzhou numerals
        | 0x3031..=0x3035 // kana repeat marks
        | 0x303B..=0x303C // 〻 〼
        | 0x3040..=0x30FF // Hiragana, Katakana
        | 0x3100..=0x312F // Bopomofo
        | 0x3130..=0x318F // Hangul compatibility Jamo
        | 0x31A0..=0x31BF // Bopomofo extended
        | 0x31F0..=0x31FF // Katakana phonetic extensions
        | 0x3400..=0x4DBF // CJK extension A
        | 0x4E00..=0x9FFF // CJK unified ideographs
        | 0xA960..=0xA97F // Hangul Jamo extended A
        | 0xAC00..=0xD7FF // Hangul syllables, Jamo extended B
        | 0xF900..=0xFAFF // CJK compatibility ideographs
        | 0xFF66..=0xFFDC // half-width Katakana and Hangul
        | 0x20000..=0x3FFFF // CJK extensions B and later, compatibility supplement
    )
}

/// Cuts text into words at anything that is not a letter or a digit, and runs of CJK characters
/// into overlapping pairs (see the module docs).
#[derive(Clone, Default)]
struct WordsAndPairs {
    token: Token,
    /// The byte offsets of the current CJK run's characters, and its end.
    run: Vec<usize>,
}

struct WordsAndPairsStream<'a> {
    text: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    token: &'a mut Token,
    run: &'a mut Vec<usize>,
    /// The next pair of `run` to give (its first character's place in `run`).
    next_pair: usize,
}

impl Tokenizer for WordsAndPairs {
    type TokenStream<'a> = WordsAndPairsStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> WordsAndPairsStream<'a> {
        self.token.reset();
        self.run.clear();
        WordsAndPairsStream {
            text,
            chars: text.char_indices().peekable(),
            token: &mut self.token,
            run: &mut self.run,
            next_pair: 0,
        }
    }
}

impl WordsAndPairsStream<'_> {
    fn emit(&mut self, from: usize, to: usize) -> bool {
        self.token.offset_from = from;
        self.token.offset_to = to;
        self.token.text.push_str(&self.text[from..to]);
        true
    }

    /// The next pair of the current run (a run of one character is that character), if any is
    /// left.
    fn next_of_run(&mut self) -> Option<(usize, usize)> {
        // `run` holds the characters' offsets and then the run's end
        let chars = self.run.len().checked_sub(1)?;
        let i = self.next_pair;
        if (chars == 1 && i == 0) || i + 1 < chars {
            self.next_pair += 1;
            let to = self.run[(i + 2).min(chars)];
            return Some((self.run[i], to));
        }
        None
    }
}

impl TokenStream for WordsAndPairsStream<'_> {
    fn advance(&mut self) -> bool {
        self.token.text.clear();
        self.token.position = self.token.position.wrapping_add(1);
        if let Some((from, to)) = self.next_of_run() {
            return self.emit(from, to);
        }
        self.run.clear();
        self.next_pair = 0;
        while let Some((from, c)) = self.chars.next() {
            if !c.is_alphanumeric() {
                continue;
            }
            if is_cjk(c) {
                self.run.push(from);
                while let Some(&(at, c)) = self.chars.peek() {
                    // (CJK punctuation such as `・` ends a run, as any other does)
                    if !is_cjk(c) || !c.is_alphanumeric() {
                        break;
                    }
                    self.run.push(at);
                    self.chars.next();
                }
                let end = self.chars.peek().map_or(self.text.len(), |(at, _)| *at);
                self.run.push(end);
                let (from, to) = self.next_of_run().unwrap_or((from, end));
                return self.emit(from, to);
            }
            // a word: letters and digits up to anything else or a CJK character
            let mut to = self.text.len();
            while let Some(&(at, c)) = self.chars.peek() {
                if !c.is_alphanumeric() || is_cjk(c) {
                    to = at;
                    break;
                }
                self.chars.next();
            }
            return self.emit(from, to);
        }
        false
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

fn err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Keyword(e.to_string())
}

pub(crate) struct KeywordIndex {
    id: Field,
    text: Field,
    writer: Mutex<IndexWriter<TantivyDocument>>,
    reader: IndexReader,
    /// Changes not committed yet: the next search commits them first.
    pending: std::sync::atomic::AtomicBool,
}

impl KeywordIndex {
    pub fn new() -> Result<KeywordIndex, IndexError> {
        let mut schema = Schema::builder();
        let id = schema.add_u64_field("id", INDEXED | FAST);
        let text = schema.add_text_field(
            "text",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(TOKENIZER)
                    .set_index_option(IndexRecordOption::WithFreqs),
            ),
        );
        // One indexing thread and one merge thread per shard, and no separate thread for a
        // document store it does not have: a node may hold many collections.
        let index = Index::builder()
            .schema(schema.build())
            .settings(IndexSettings {
                docstore_compress_dedicated_thread: false,
                ..IndexSettings::default()
            })
            .create_in_ram()
            .map_err(err)?;
        index.tokenizers().register(TOKENIZER, analyzer());
        let writer = index
            .writer_with_options(
                IndexWriterOptions::builder()
                    .memory_budget_per_thread(WRITER_BYTES)
                    .num_worker_threads(1)
                    .num_merge_threads(1)
                    .build(),
            )
            .map_err(err)?;
        let mut merges = LogMergePolicy::default();
        merges.set_del_docs_ratio_before_merge(DELETED_RATIO_BEFORE_MERGE);
        writer.set_merge_policy(Box::new(merges));
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(err)?;
        Ok(KeywordIndex {
            id,
            text,
            writer: Mutex::new(writer),
            reader,
            pending: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Index the points' text (points without text are left out) and make it searchable.
    pub fn add<'a>(
        &self,
        points: impl Iterator<Item = (PointId, &'a str)>,
    ) -> Result<(), IndexError> {
        let writer = self.writer.lock();
        for (id, text) in points {
            if !text.is_empty() {
                writer
                    .add_document(doc!(self.id => id, self.text => text))
                    .map_err(err)?;
            }
        }
        self.pending
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Forget points (ids it never had are no-ops).
    pub fn delete(&self, ids: &[PointId]) -> Result<(), IndexError> {
        let writer = self.writer.lock();
        for &id in ids {
            writer.delete_term(Term::from_field_u64(self.id, id));
        }
        self.pending
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Bytes of the index's segments, once the changes not committed yet are (as the next
    /// search would commit them).
    pub fn bytes(&self) -> u64 {
        let _ = self.refresh();
        self.reader
            .searcher()
            .space_usage()
            .map(|u| u.total().get_bytes())
            .unwrap_or(0)
    }

    /// Commit the changes made since the last commit and show them to searches. Changes are
    /// committed by the next search (and after a bulk build), not one by one: a tantivy commit
    /// starts a new segment writer with a fresh 15 MB arena, which per ingest batch cost more
    /// than embedding the batch; a search still sees every change made before it began.
    pub fn refresh(&self) -> Result<(), IndexError> {
        use std::sync::atomic::Ordering;
        if !self.pending.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut writer = self.writer.lock();
        if self.pending.swap(false, Ordering::AcqRel) {
            if let Err(e) = writer.commit() {
                self.pending.store(true, Ordering::Release);
                return Err(err(e));
            }
            self.reader.reload().map_err(err)?;
        }
        Ok(())
    }

    /// The query's words, as the text was analysed: each once, the first MAX_QUERY_WORDS.
    fn words(&self, query: &str) -> Vec<String> {
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream(query);
        let mut seen = std::collections::HashSet::new();
        let mut words: Vec<String> = Vec::new();
        while words.len() < MAX_QUERY_WORDS && stream.advance() {
            let w = &stream.token().text;
            if seen.insert(w.clone()) {
                words.push(w.clone());
            }
        }
        words
    }

    /// The `k` points whose text ranks best for `query` by BM25, best first, among `allowed`
    /// (sorted) when given.
    pub fn search(
        &self,
        query: &str,
        k: usize,
        allowed: Option<Arc<Vec<PointId>>>,
    ) -> Result<Vec<(PointId, f32)>, IndexError> {
        let words = self.words(query);
        if k == 0 || words.is_empty() {
            return Ok(Vec::new());
        }
        self.refresh()?;
        let clauses: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|w| {
                let q: Box<dyn Query> = Box::new(TermQuery::new(
                    Term::from_field_text(self.text, w),
                    IndexRecordOption::WithFreqs,
                ));
                (Occur::Should, q)
            })
            .collect();
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = match allowed {
            None => searcher.search(&query, &TopDocs::with_limit(k)),
            Some(ids) => searcher.search(
                &query,
                &FilterCollector::new(
                    "id".to_string(),
                    move |id: u64| ids.binary_search(&id).is_ok(),
                    TopDocs::with_limit(k),
                ),
            ),
        }
        .map_err(err)?;
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            let column = searcher
                .segment_reader(address.segment_ord)
                .fast_fields()
                .u64("id")
                .map_err(err)?;
            if let Some(id) = column.first(address.doc_id) {
                out.push((id, score));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_bm25_with_folded_words_filters_and_deletes() {
        let k = KeywordIndex::new().unwrap();
        let texts = [
            (1, "The café on the corner serves coffee and cake."),
            (2, "Coffee, coffee and more coffee: a coffee lover's guide."),
            (3, "A guide to tea."),
            (4, ""),
            (5, "Rust is a systems programming language."),
        ];
        k.add(texts.iter().map(|(id, t)| (*id, *t))).unwrap();
        let ids = |q: &str, allowed: Option<Vec<u64>>| -> Vec<u64> {
            k.search(q, 10, allowed.map(Arc::new))
                .unwrap()
                .iter()
                .map(|h| h.0)
                .collect()
        };
        // term frequency ranks 2 above 1; case and accents fold
        assert_eq!(ids("COFFEE", None), vec![2, 1]);
        assert_eq!(ids("cafe", None), vec![1]);
        // any word matches; a rare word weighs more than a common one
        assert_eq!(ids("guide tea", None)[0], 3);
        // query syntax is just words (no error)
        assert_eq!(ids("\"rust\" OR: (language", None), vec![5]);
        assert!(ids("!!! ...", None).is_empty());
        // within the allowed points only
        assert_eq!(ids("coffee", Some(vec![1, 5])), vec![1]);
        // deleted points are gone at once
        k.delete(&[2, 99]).unwrap();
        assert_eq!(ids("coffee", None), vec![1]);
        // scores are BM25's: positive, best first
        let hits = k.search("guide coffee", 10, None).unwrap();
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1) && hits.iter().all(|h| h.1 > 0.0));
        assert!(k.search("coffee", 0, None).unwrap().is_empty());
        // a query of thousands of words counts its first 1,024 (no error, no unbounded work)
        let long: String = (0..5000).map(|i| format!("w{i} ")).collect::<String>() + "guide";
        assert_eq!(k.words(&long).len(), MAX_QUERY_WORDS);
        assert!(k.search(&long, 10, None).unwrap().is_empty());
    }

    fn tokens(text: &str) -> Vec<(String, usize, usize)> {
        let mut a = analyzer();
        let mut stream = a.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            let t = stream.token();
            out.push((t.text.clone(), t.offset_from, t.offset_to));
        }
        out
    }

    #[test]
    fn words_are_cut_at_anything_but_letters_and_digits_and_cjk_runs_into_pairs() {
        let words = |text: &str| -> Vec<String> { tokens(text).into_iter().map(|t| t.0).collect() };
        assert_eq!(
            words("Hello, happy tax-payer!"),
            ["hello", "happy", "tax", "payer"]
        );
        assert_eq!(words("Café №5 in 2024"), ["cafe", "5", "in", "2024"]);
        assert!(words("  ...  ").is_empty());
        // a run of Han, kana or Hangul is cut into overlapping pairs, a lone one stays whole
        assert_eq!(words("東京都"), ["東京", "京都"]);
        assert_eq!(words("東"), ["東"]);
        assert_eq!(words("東京"), ["東京"]);
        assert_eq!(
            words("東京タワーは、高い。"),
            ["東京", "京タ", "タワ", "ワー", "ーは", "高い"]
        );
        assert_eq!(words("서울 특별시"), ["서울", "특별", "별시"]);
        // mixed with other words, with no space between: each side is cut its own way
        assert_eq!(
            words("iPhone15を買った"),
            ["iphone15", "を買", "買っ", "った"]
        );
        assert_eq!(words("在Rust中"), ["在", "rust", "中"]);
        // CJK punctuation ends a run like any other
        assert_eq!(words("東京・大阪"), ["東京", "大阪"]);
        // offsets are the original text's bytes
        let t = tokens("ab 東京都");
        assert_eq!(t[1], ("東京".to_string(), 3, 9));
        assert_eq!(t[2], ("京都".to_string(), 6, 12));
        // the same analyser is used twice in a row (its buffers are reset)
        let mut a = analyzer();
        for _ in 0..2 {
            let mut s = a.token_stream("東京 x");
            let mut n = 0;
            while s.advance() {
                n += 1;
            }
            assert_eq!(n, 2);
        }
    }

    #[test]
    fn chinese_japanese_and_korean_text_is_found_by_words_inside_longer_runs() {
        let k = KeywordIndex::new().unwrap();
        let texts = [
            (1, "東京は日本の首都であり、最大の都市です。"),
            (2, "京都には多くの寺院があります。"),
            (3, "北京是中华人民共和国的首都。"),
            (4, "上海是中国最大的城市。"),
            (5, "서울특별시는 대한민국의 수도이다."),
            (6, "Tokyo is the capital of Japan."),
        ];
        k.add(texts.iter().map(|(id, t)| (*id, *t))).unwrap();
        let top = |q: &str| -> Option<u64> { k.search(q, 10, None).unwrap().first().map(|h| h.0) };
        // words that sit inside runs with no space around them
        assert_eq!(top("日本の首都"), Some(1));
        assert_eq!(top("寺院"), Some(2));
        assert_eq!(top("中华人民共和国"), Some(3));
        assert_eq!(top("最大的城市"), Some(4));
        assert_eq!(top("대한민국 수도"), Some(5));
        assert_eq!(top("capital"), Some(6));
        // a word none of them holds finds nothing
        assert_eq!(top("大阪"), None);
    }
}
