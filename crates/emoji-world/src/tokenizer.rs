//! The emoji model's tokenizer: OpenAI's CLIP BPE (the file the
//! `instant-clip-tokenizer` crate ships) cut to its first merges, written as
//! the `vocab.json` + `merges.txt` folder that `CLIPTokenizer` reads.
//!
//! Keeping the first N merges (in rank order) is still a valid BPE: words
//! whose merges were cut are spelled with shorter pieces. The vocabulary is
//! built the standard CLIP way: the 256 byte symbols, their `</w>` forms,
//! one token per kept merge, then `<|startoftext|>` and `<|endoftext|>`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use psotune::models::clip::bytes_to_unicode;

pub const BOS: &str = "<|startoftext|>";
pub const EOS: &str = "<|endoftext|>";

/// Byte values in the order CLIP lists their symbols: the printable
/// Latin-1 ranges first, then the remaining bytes (both ascending).
fn byte_order() -> Vec<u8> {
    let keep = |b: u8| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut order: Vec<u8> = (0..=255u8).filter(|&b| keep(b)).collect();
    order.extend((0..=255u8).filter(|&b| !keep(b)));
    order
}

/// Write `out/{vocab.json, merges.txt, tokenizer_config.json,
/// special_tokens_map.json}`; returns the vocabulary size.
pub fn write_tokenizer(bpe_file: &Path, merges: usize, max_length: usize, out: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(bpe_file).with_context(|| format!("reading {}", bpe_file.display()))?;
    // Line 0 is the `#version` header; CLIP uses lines 1..=48894.
    let all: Vec<&str> = text.lines().skip(1).take(49152 - 256 - 2).collect();
    if all.len() < merges {
        bail!("{} has {} merges, fewer than the {merges} asked for", bpe_file.display(), all.len());
    }
    let kept = &all[..merges];
    let table = bytes_to_unicode();
    let order = byte_order();
    let mut tokens: Vec<String> = order.iter().map(|&b| table[b as usize].to_string()).collect();
    tokens.extend(order.iter().map(|&b| format!("{}</w>", table[b as usize])));
    for (i, line) in kept.iter().enumerate() {
        let Some((a, b)) = line.split_once(' ') else {
            bail!("{}:{}: not a merge: {line:?}", bpe_file.display(), i + 2);
        };
        tokens.push(format!("{a}{b}"));
    }
    tokens.push(BOS.into());
    tokens.push(EOS.into());

    let mut vocab = serde_json::Map::new();
    for (id, tok) in tokens.iter().enumerate() {
        // A merge can reproduce an existing token; CLIP's dict keeps the last id.
        vocab.insert(tok.clone(), id.into());
    }
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("vocab.json"), serde_json::to_string(&vocab)?)?;
    let mut merges_txt = String::from("#version: 0.2\n");
    for line in kept {
        merges_txt.push_str(line);
        merges_txt.push('\n');
    }
    std::fs::write(out.join("merges.txt"), merges_txt)?;
    let specials = serde_json::json!({ "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS });
    let mut config = specials.clone();
    let obj = config.as_object_mut().expect("object literal");
    obj.insert("model_max_length".into(), max_length.into());
    obj.insert("tokenizer_class".into(), "CLIPTokenizer".into());
    obj.insert("do_lower_case".into(), true.into());
    obj.insert("errors".into(), "replace".into());
    obj.insert("clean_up_tokenization_spaces".into(), true.into());
    std::fs::write(out.join("tokenizer_config.json"), serde_json::to_string_pretty(&config)?)?;
    std::fs::write(out.join("special_tokens_map.json"), serde_json::to_string_pretty(&specials)?)?;
    Ok(tokens.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_lists_every_byte_once() {
        let mut o = byte_order();
        assert_eq!(o[0], b'!');
        assert_eq!(o[188], 0);
        o.sort();
        assert_eq!(o, (0..=255u8).collect::<Vec<_>>());
    }

    #[test]
    fn truncated_bpe_tokenizes_with_the_kept_merges() {
        let dir = psotune::scratch::ScratchDir::new("emoji-tok").unwrap();
        let bpe = dir.join("bpe.txt");
        std::fs::write(&bpe, "#version: 0.2\nd o\ndo g</w>\nc a\n").unwrap();
        let n = write_tokenizer(&bpe, 2, 16, &dir.join("tok")).unwrap();
        assert_eq!(n, 512 + 2 + 2);
        let tok = psotune::models::clip::ClipTokenizer::from_dir(dir.join("tok")).unwrap();
        let ids = tok.encode("dog cat").unwrap();
        assert_eq!(ids.len(), 16);
        // bos, "dog</w>", then "cat" spelled with byte symbols (c a t</w>).
        assert_eq!(ids[0] as usize, n - 2);
        assert_eq!(ids[1] as usize, 513);
        assert_eq!(ids[5] as usize, n - 1);
    }
}
