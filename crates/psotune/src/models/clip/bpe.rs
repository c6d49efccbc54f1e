//! Byte-level BPE as the `tokenizers` library's `BPE` model runs it for CLIP
//! (`end_of_word_suffix = "</w>"`, no continuing-subword prefix, no dropout,
//! `fuse_unk = false`): the word's characters become symbols, the last one
//! carrying `</w>`, then the adjacent pair with the lowest merge rank is
//! merged, ties going to the leftmost pair, until no pair has a merge.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// GPT-2's reversible byte -> printable character table (`bytes_to_unicode`
/// in CLIP's `simple_tokenizer.py` and `tokenizers`' ByteLevel): printable
/// Latin-1 bytes map to themselves, the other 68 to U+0100 onwards in order.
pub fn bytes_to_unicode() -> [char; 256] {
    let keeps = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let c = if keeps(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        // Every code point here is below U+0200, so always a valid char.
        table[b as usize] = char::from_u32(c).unwrap_or('\u{fffd}');
    }
    table
}

/// The merge table over token ids: (left, right) -> (rank, merged id).
#[derive(Debug, Clone)]
pub struct Bpe {
    pub vocab: HashMap<String, u32>,
    merges: HashMap<(u32, u32), (u32, u32)>,
    unk: Option<u32>,
}

impl Bpe {
    /// `merges` in rank order. As in `tokenizers`, every merge's parts and
    /// result must be in the vocabulary; a repeated pair keeps its last rank.
    pub fn new(vocab: HashMap<String, u32>, merges: &[(String, String)], unk: Option<u32>) -> Result<Self, String> {
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let id = |s: &str| vocab.get(s).copied().ok_or_else(|| format!("merge {a:?} {b:?} (rank {rank}): {s:?} is not in the vocabulary"));
            let merged = id(&format!("{a}{b}"))?;
            table.insert((id(a)?, id(b)?), (rank as u32, merged));
        }
        Ok(Self { vocab, merges: table, unk })
    }

    /// Token ids of one pre-tokenized word (already byte-level mapped).
    pub fn word(&self, word: &str) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::with_capacity(word.len());
        let mut chars = word.chars().peekable();
        let mut buf = String::new();
        while let Some(c) = chars.next() {
            buf.clear();
            buf.push(c);
            if chars.peek().is_none() {
                buf.push_str("</w>");
            }
            // Characters missing from the vocabulary become one unk each.
            if let Some(id) = self.vocab.get(&buf).copied().or(self.unk) {
                ids.push(id);
            }
        }
        self.merge_all(ids)
    }

    /// Lowest (rank, position) first: a heap of candidate pairs over a linked
    /// list of symbols; entries made stale by earlier merges are skipped.
    fn merge_all(&self, ids: Vec<u32>) -> Vec<u32> {
        let n = ids.len();
        if n < 2 {
            return ids;
        }
        let mut id = ids;
        let mut alive = vec![true; n];
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, id: &[u32], left: usize, right: usize| {
            if let Some(&(rank, merged)) = self.merges.get(&(id[left], id[right])) {
                heap.push(Reverse((rank, left, merged)));
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, &id, i, i + 1);
        }
        while let Some(Reverse((_, left, merged))) = heap.pop() {
            let Some(right) = next[left] else { continue };
            if !alive[left] || self.merges.get(&(id[left], id[right])).map(|m| m.1) != Some(merged) {
                continue;
            }
            id[left] = merged;
            alive[right] = false;
            next[left] = next[right];
            if let Some(r) = next[right] {
                prev[r] = Some(left);
            }
            if let Some(p) = prev[left] {
                push(&mut heap, &id, p, left);
            }
            if let Some(r) = next[left] {
                push(&mut heap, &id, left, r);
            }
        }
        (0..n).filter(|&i| alive[i]).map(|i| id[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpe(symbols: &[&str], merges: &[(&str, &str)]) -> Bpe {
        let vocab = symbols.iter().enumerate().map(|(i, s)| (s.to_string(), i as u32)).collect();
        let merges: Vec<(String, String)> = merges.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        Bpe::new(vocab, &merges, Some(0)).unwrap()
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xad], 'Ń');
        let mut all: Vec<char> = t.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn lowest_rank_first_then_leftmost() {
        // "aaa</w>": the pair (a, a) merges at the left first.
        let b = bpe(&["<unk>", "a", "a</w>", "aa", "aa</w>", "aaa</w>"], &[("a", "a"), ("a", "a</w>"), ("aa", "a</w>")]);
        assert_eq!(b.word("aaa"), vec![5]);
        assert_eq!(b.word("aaaa"), vec![3, 4]);
        // Unknown characters become unk, one each.
        assert_eq!(b.word("xa"), vec![0, 2]);
    }

    #[test]
    fn a_merge_outside_the_vocabulary_is_an_error() {
        let vocab: HashMap<String, u32> = [("a".to_string(), 0), ("b".to_string(), 1)].into();
        let err = Bpe::new(vocab, &[("a".into(), "b".into())], None).unwrap_err();
        assert!(err.contains("\"ab\""), "{err}");
    }
}
