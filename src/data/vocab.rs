//! Token vocabularies and label sets (LANGUAGE.md §3), built from the train source only.
//!
//! Ids: 0 `<pad>`, 1 `<unk>`; with `bos` or `eos` set, 2 `<bos>` and 3 `<eos>` are both
//! reserved. The other tokens follow in order of decreasing count (after `max_len`
//! truncation), ties broken by the tokens' code-point order; a token seen fewer than
//! `min_freq` times gets no id and reads as `<unk>`.

use super::{TokenUnit, TokenizerOpts};
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeSet;

pub const PAD: i64 = 0;
pub const UNK: i64 = 1;
pub const BOS: i64 = 2;
pub const EOS: i64 = 3;

/// Number of reserved ids at the start of the vocabulary.
pub fn reserved(opts: &TokenizerOpts) -> usize {
    if opts.bos || opts.eos { 4 } else { 2 }
}

/// The tokens of one row, truncated to `max_len` (before bos/eos).
pub fn tokens(text: &str, unit: TokenUnit, max_len: Option<usize>) -> impl Iterator<Item = &str> {
    let limit = max_len.unwrap_or(usize::MAX);
    let (chars, words) = match unit {
        TokenUnit::Chars => (Some(text.char_indices().map(|(i, c)| &text[i..i + c.len_utf8()])), None),
        TokenUnit::Words => (None, Some(text.split_whitespace())),
    };
    chars.into_iter().flatten().chain(words.into_iter().flatten()).take(limit)
}

/// Builds the vocabulary (id → token) from the train rows.
pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>, unit: TokenUnit, opts: &TokenizerOpts) -> Vec<String> {
    let mut counts: HashMap<&'a str, u64> = HashMap::default();
    for text in texts {
        for t in tokens(text, unit, opts.max_len) {
            *counts.entry(t).or_insert(0) += 1;
        }
    }
    let mut entries: Vec<(&str, u64)> = counts.into_iter().filter(|&(_, c)| c >= opts.min_freq.max(1)).collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut vocab: Vec<String> = vec!["<pad>".into(), "<unk>".into()];
    if reserved(opts) == 4 {
        vocab.push("<bos>".into());
        vocab.push("<eos>".into());
    }
    vocab.extend(entries.into_iter().map(|(t, _)| t.to_string()));
    vocab
}

/// Token → id for the non-reserved ids of `vocab` (a token spelled like a reserved one, say
/// `<unk>` in the data, keeps its own id).
pub fn index<'v>(vocab: &'v [String], opts: &TokenizerOpts) -> HashMap<&'v str, i64> {
    vocab.iter().enumerate().skip(reserved(opts)).map(|(i, t)| (t.as_str(), i as i64)).collect()
}

/// Appends the ids of one row (with bos/eos) to `out`; returns the row's length.
pub fn encode(text: &str, unit: TokenUnit, opts: &TokenizerOpts, index: &HashMap<&str, i64>, out: &mut Vec<i64>) -> usize {
    let before = out.len();
    if opts.bos {
        out.push(BOS);
    }
    for t in tokens(text, unit, opts.max_len) {
        out.push(index.get(t).copied().unwrap_or(UNK));
    }
    if opts.eos {
        out.push(EOS);
    }
    out.len() - before
}

/// Class names in code-point order.
pub fn classes<'a>(labels: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    labels.into_iter().collect::<BTreeSet<_>>().into_iter().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(min_freq: u64, bos: bool, eos: bool, max_len: Option<usize>) -> TokenizerOpts {
        TokenizerOpts { min_freq, bos, eos, max_len }
    }

    fn ids(texts: &[&str], unit: TokenUnit, o: TokenizerOpts) -> (Vec<String>, Vec<Vec<i64>>) {
        let vocab = build(texts.iter().copied(), unit, &o);
        let idx = index(&vocab, &o);
        let rows = texts
            .iter()
            .map(|t| {
                let mut v = Vec::new();
                encode(t, unit, &o, &idx, &mut v);
                v
            })
            .collect();
        (vocab, rows)
    }

    #[test]
    fn counts_then_code_point_order() {
        // b ×3, a ×2, c ×2, é ×1, B ×1
        let (vocab, rows) = ids(&["bab", "cab", "cBé"], TokenUnit::Chars, TokenizerOpts::default());
        assert_eq!(vocab, vec!["<pad>", "<unk>", "b", "a", "c", "B", "é"]);
        assert_eq!(rows, vec![vec![2, 3, 2], vec![4, 3, 2], vec![4, 5, 6]]);
    }

    #[test]
    fn min_freq_makes_rare_tokens_unknown() {
        let (vocab, rows) = ids(&["aab", "ac"], TokenUnit::Chars, opts(2, false, false, None));
        assert_eq!(vocab, vec!["<pad>", "<unk>", "a"]);
        assert_eq!(rows, vec![vec![2, 2, 1], vec![2, 1]]);
    }

    #[test]
    fn bos_or_eos_reserves_both() {
        let (vocab, rows) = ids(&["x y", "y"], TokenUnit::Words, opts(1, false, true, None));
        assert_eq!(vocab, vec!["<pad>", "<unk>", "<bos>", "<eos>", "y", "x"]);
        assert_eq!(rows, vec![vec![5, 4, 3], vec![4, 3]]);
        let (vocab, rows) = ids(&["x"], TokenUnit::Words, opts(1, true, false, None));
        assert_eq!(vocab.len(), 5);
        assert_eq!(rows, vec![vec![2, 4]]);
        let (_, rows) = ids(&["x", ""], TokenUnit::Words, opts(1, true, true, None));
        assert_eq!(rows, vec![vec![2, 4, 3], vec![2, 3]]);
    }

    #[test]
    fn max_len_truncates_before_counting_and_before_bos_eos() {
        // Only "a b" of the first row counts: c is never seen, so it is not in the vocabulary.
        let (vocab, rows) = ids(&["a b c", "c"], TokenUnit::Words, opts(1, true, true, Some(2)));
        assert_eq!(vocab, vec!["<pad>", "<unk>", "<bos>", "<eos>", "a", "b", "c"]);
        assert_eq!(rows, vec![vec![2, 4, 5, 3], vec![2, 6, 3]]);
        let (vocab, _) = ids(&["a b c c", "c"], TokenUnit::Words, opts(1, false, false, Some(2)));
        // counts after truncation: a 1, b 1, c 1
        assert_eq!(vocab, vec!["<pad>", "<unk>", "a", "b", "c"]);
    }

    #[test]
    fn words_split_on_unicode_whitespace() {
        assert_eq!(tokens("a\u{3000}b\t c\u{a0}d", TokenUnit::Words, None).collect::<Vec<_>>(), vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn data_tokens_spelled_like_reserved_ones_keep_their_own_id() {
        let (vocab, rows) = ids(&["<unk> <unk> z"], TokenUnit::Words, TokenizerOpts::default());
        assert_eq!(vocab, vec!["<pad>", "<unk>", "<unk>", "z"]);
        assert_eq!(rows, vec![vec![2, 2, 3]]);
    }

    #[test]
    fn classes_in_code_point_order() {
        assert_eq!(classes(["dutch", "English", "dutch", "ägypt"]), vec!["English", "dutch", "ägypt"]);
    }
}
