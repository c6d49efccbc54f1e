//! The CLIP tokenizer exactly as transformers 5.24's `CLIPTokenizer` (a
//! `tokenizers` pipeline, models/clip/tokenization_clip.py) encodes
//! `tokenizer(text, padding="max_length", max_length=model_max_length,
//! truncation=True)`:
//!
//! 1. special tokens (bos, eos, pad, unk and any added token) are cut out of
//!    the raw text, leftmost-longest; each becomes its id;
//! 2. the rest is normalised: NFC, every whitespace run -> one space,
//!    lowercase (per character);
//! 3. split by CLIP's pattern (contractions, letter runs, single digits,
//!    punctuation runs; whitespace dropped);
//!    then split again by the ByteLevel pre-tokeniser's GPT-2 pattern;
//! 4. each piece's UTF-8 bytes -> GPT-2's byte characters -> BPE with `</w>`;
//! 5. truncate to `max_length - 2`, wrap in bos/eos, pad to `max_length`.
//!
//! The pad token is a *special* token: SD2's and SDXL's `tokenizer_2` pad
//! with "!", so a "!" in their prompts encodes as the bare "!" (id 0), not
//! "!</w>" (256) as SD1.5's tokenizer gives. transformers does this too.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use regex::Regex;
use serde_json::Value;
use unicode_normalization_alignments::UnicodeNormalization;

use super::bpe::{bytes_to_unicode, Bpe};
use crate::error::{Error, Result};

/// CLIP's pre-tokenizer pattern (the `Split` in tokenization_clip.py).
const CLIP_PATTERN: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The ByteLevel pre-tokeniser's own split (GPT-2's pattern), applied to each
/// CLIP piece. CLIP pieces never hold whitespace, so GPT-2's optional leading
/// space and its whitespace alternatives (whose look-ahead `regex` lacks) can
/// never match and are left out. It changes only the pieces that CLIP's
/// pattern keeps whole: "<|endoftext|>" typed in a case the special-token
/// match misses becomes "<|", "endoftext", "|>".
const BYTE_LEVEL_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

/// transformers' default when a config gives none (every CLIP checkpoint says 77).
pub const DEFAULT_MAX_LENGTH: usize = 77;

/// token -> id.
type Vocab = HashMap<String, u32>;
/// One merge rule, (left, right).
type Merge = (String, String);

/// A string matched whole before BPE. `normalized` ones are matched in the
/// normalised text (so case-insensitively), the others in the raw text.
#[derive(Debug, Clone, PartialEq)]
struct SpecialToken {
    content: String,
    id: u32,
    normalized: bool,
}

#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    bpe: Bpe,
    specials: Vec<SpecialToken>,
    byte_chars: [char; 256],
    pattern: Regex,
    byte_level_pattern: Regex,
    whitespace: Regex,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
}

/// One mention of a token in the config files: its text and, when given as
/// an `AddedToken` dict, its `normalized` flag.
struct Mention {
    content: String,
    normalized: bool,
    id: Option<u32>,
}

impl ClipTokenizer {
    /// Read a diffusers `tokenizer/` folder: `vocab.json` + `merges.txt`
    /// (or, failing those, the vocabulary and merges of `tokenizer.json`, as
    /// transformers 5 saves it), and the special tokens and
    /// `model_max_length` of `tokenizer_config.json` /
    /// `special_tokens_map.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config = read_optional_json(&config_path)?.unwrap_or(Value::Null);
        let tok_err = |path: &Path, msg: String| Error::Tokenizer { path: path.to_path_buf(), msg };

        let mut mentions: Vec<Mention> = Vec::new();
        let use_tokenizer_json = !dir.join("vocab.json").is_file() && dir.join("tokenizer.json").is_file();
        let (vocab_path, merges_path) = if use_tokenizer_json {
            (dir.join("tokenizer.json"), dir.join("tokenizer.json"))
        } else {
            (dir.join("vocab.json"), dir.join("merges.txt"))
        };
        let (vocab, merges) = if use_tokenizer_json {
            read_tokenizer_json(&vocab_path, &mut mentions)?
        } else {
            (read_vocab(&vocab_path)?, read_merges(&merges_path)?)
        };

        let (specials, [bos, eos, unk, pad]) = special_tokens(dir, &config, &vocab, &vocab_path, mentions)?;
        let id_of = |s: &str| specials.iter().find(|t| t.content == s).map(|t| t.id).unwrap_or_default();
        let (bos_id, eos_id, pad_id, unk_id) = (id_of(&bos), id_of(&eos), id_of(&pad), id_of(&unk));

        let max_length = match config.get("model_max_length") {
            None | Some(Value::Null) => DEFAULT_MAX_LENGTH,
            Some(v) => match v.as_f64() {
                Some(x) if (2.0..=65536.0).contains(&x) && x.fract() == 0.0 => x as usize,
                _ => return Err(tok_err(&config_path, format!("model_max_length {v} is not a usable sequence length (CLIP uses 77)"))),
            },
        };

        let bpe = Bpe::new(vocab, &merges, Some(unk_id)).map_err(|msg| tok_err(&merges_path, msg))?;
        let pattern = Regex::new(CLIP_PATTERN).map_err(|e| Error::invalid(format!("CLIP pattern: {e}")))?;
        let byte_level_pattern = Regex::new(BYTE_LEVEL_PATTERN).map_err(|e| Error::invalid(format!("ByteLevel pattern: {e}")))?;
        let whitespace = Regex::new(r"\s+").map_err(|e| Error::invalid(format!("whitespace pattern: {e}")))?;
        Ok(Self { bpe, specials, byte_chars: bytes_to_unicode(), pattern, byte_level_pattern, whitespace, bos_id, eos_id, pad_id, max_length })
    }

    /// `max_length` ids: bos, the text's tokens (truncated), eos, padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenize(text);
        ids.truncate(self.max_length - 2);
        let mut out = Vec::with_capacity(self.max_length);
        out.push(self.bos_id);
        out.append(&mut ids);
        out.push(self.eos_id);
        out.resize(self.max_length, self.pad_id);
        Ok(out)
    }

    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// [B, max_length] u32 `input_ids`, ready for [`super::ClipTextModel::forward`].
    pub fn encode_batch_tensor<S: AsRef<str>>(&self, texts: &[S], device: &Device) -> Result<Tensor> {
        let ids: Vec<u32> = self.encode_batch(texts)?.concat();
        Ok(Tensor::from_vec(ids, (texts.len(), self.max_length), device)?)
    }

    /// The text's tokens without bos/eos, truncation or padding (to tell a
    /// user how much of a prompt was cut).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for (raw, special) in split_specials(text, self.specials.iter().filter(|s| !s.normalized)) {
            if let Some(id) = special {
                ids.push(id);
                continue;
            }
            let normalized = self.normalize(raw);
            for (piece, special) in split_specials(&normalized, self.specials.iter().filter(|s| s.normalized)) {
                match special {
                    Some(id) => ids.push(id),
                    None => self.tokenize_normalized(piece, &mut ids),
                }
            }
        }
        ids
    }

    /// NFC, whitespace runs to one space, then per-character lowercase (the
    /// `tokenizers` `Lowercase` normaliser maps each char alone, so a final
    /// capital sigma becomes σ, not ς).
    /// NFC uses `tokenizers`' own crate and its Unicode 9 tables: a newer
    /// table reorders marks assigned since (found by fuzzing against
    /// transformers).
    fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().map(|(c, _)| c).collect();
        self.whitespace.replace_all(&nfc, " ").chars().flat_map(char::to_lowercase).collect()
    }

    fn tokenize_normalized(&self, text: &str, ids: &mut Vec<u32>) {
        let mut word = String::new();
        for clip_piece in self.pattern.find_iter(text) {
            for piece in self.byte_level_pattern.find_iter(clip_piece.as_str()) {
                word.clear();
                word.extend(piece.as_str().bytes().map(|b| self.byte_chars[b as usize]));
                ids.extend(self.bpe.word(&word));
            }
        }
    }

    /// Pad to `max_length` with `pad_id` instead of what the folder says
    /// (open_clip's tokenizer fills its context with zeros after the eot).
    /// Only the layout changes: the folder's special tokens still tokenize as
    /// it says.
    pub fn with_padding(mut self, max_length: usize, pad_id: u32) -> Result<Self> {
        if max_length < 2 {
            return Err(Error::invalid(format!("a context of {max_length} tokens cannot hold bos and eos")));
        }
        self.max_length = max_length;
        self.pad_id = pad_id;
        Ok(self)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn vocab_size(&self) -> usize {
        self.bpe.vocab.len()
    }
}

/// Resolve the special tokens as transformers registers them. `mentions`
/// holds tokenizer.json's `added_tokens`; returns every token to cut out of
/// the text, and the texts of bos, eos, unk and pad.
fn special_tokens(dir: &Path, config: &Value, vocab: &Vocab, vocab_path: &Path, mut mentions: Vec<Mention>) -> Result<(Vec<SpecialToken>, [String; 4])> {
    let config_path = dir.join("tokenizer_config.json");
    let tok_err = |path: &Path, msg: String| Error::Tokenizer { path: path.to_path_buf(), msg };
    // Tokens the files list explicitly, with their flags: tokenizer.json's
    // `added_tokens` (read above) and the config's `added_tokens_decoder`.
    if let Some(decoder) = config.get("added_tokens_decoder").and_then(Value::as_object) {
        for (id, tok) in decoder {
            let id: u32 = id.parse().map_err(|_| tok_err(&config_path, format!("added_tokens_decoder key {id:?} is not a token id")))?;
            if let Some(m) = mention(tok) {
                mentions.push(Mention { id: Some(id), ..m });
            }
        }
    }
    // Named special tokens, in transformers' order: tokenizer_config.json,
    // overridden (legacy, only when the config has no
    // `added_tokens_decoder`) by special_tokens_map.json.
    let keys = ["bos_token", "eos_token", "unk_token", "pad_token"];
    let mut named: Vec<Mention> = keys
        .iter()
        .map(|&key| {
            let content = if key == "bos_token" { "<|startoftext|>" } else { "<|endoftext|>" };
            config.get(key).and_then(mention).unwrap_or(Mention { content: content.into(), normalized: false, id: None })
        })
        .collect();
    if config.get("added_tokens_decoder").is_none() {
        if let Some(map) = read_optional_json(&dir.join("special_tokens_map.json"))? {
            for (slot, key) in named.iter_mut().zip(keys) {
                if let Some(m) = map.get(key).and_then(mention) {
                    *slot = m;
                }
            }
        }
    }
    let [bos, eos, unk, pad] = [0, 1, 2, 3].map(|i| named[i].content.clone());
    // transformers maps a named token onto the listed added token of the
    // same content (keeping that one's flags); the others are registered
    // in order, a later registration of the same text setting its
    // `normalized` flag (a plain string means false).
    let explicit = mentions.len();
    for m in named {
        if !mentions[..explicit].iter().any(|e| e.content == m.content) {
            mentions.push(m);
        }
    }
    let mut specials: Vec<SpecialToken> = Vec::new();
    for m in &mentions {
        let id = match m.id.or_else(|| vocab.get(&m.content).copied()) {
            Some(id) => id,
            None => return Err(tok_err(vocab_path, format!("special token {:?} is not in the vocabulary", m.content))),
        };
        match specials.iter_mut().find(|s| s.content == m.content) {
            Some(s) => s.normalized = m.normalized,
            None => specials.push(SpecialToken { content: m.content.clone(), id, normalized: m.normalized }),
        }
    }
    Ok((specials, [bos, eos, unk, pad]))
}

/// Cut `text` at every occurrence of the tokens, leftmost first and, among
/// matches starting at the same place, longest first (the `tokenizers`
/// added-vocabulary rule). Yields (piece, Some(id)) for a token and
/// (piece, None) for the non-empty text between.
fn split_specials<'a, 'b>(text: &'a str, tokens: impl Iterator<Item = &'b SpecialToken>) -> Vec<(&'a str, Option<u32>)> {
    let tokens: Vec<&SpecialToken> = tokens.filter(|t| !t.content.is_empty()).collect();
    let mut out = Vec::new();
    let mut rest = 0;
    while rest < text.len() {
        let best = tokens
            .iter()
            .filter_map(|t| text[rest..].find(&t.content).map(|at| (rest + at, t)))
            .min_by_key(|(at, t)| (*at, std::cmp::Reverse(t.content.len())));
        let Some((at, tok)) = best else { break };
        if at > rest {
            out.push((&text[rest..at], None));
        }
        let end = at + tok.content.len();
        out.push((&text[at..end], Some(tok.id)));
        rest = end;
    }
    if rest < text.len() {
        out.push((&text[rest..], None));
    }
    out
}

/// A special-token entry: a plain string, or an `AddedToken` dict
/// (`{"content": ..., "normalized": ...}`); null means "none".
fn mention(v: &Value) -> Option<Mention> {
    match v {
        Value::String(s) => Some(Mention { content: s.clone(), normalized: false, id: None }),
        Value::Object(o) => {
            let content = o.get("content")?.as_str()?.to_string();
            let normalized = o.get("normalized").and_then(Value::as_bool).unwrap_or(false);
            Some(Mention { content, normalized, id: None })
        }
        _ => None,
    }
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    crate::error::read_json(path).map(Some)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn vocab_from_value(path: &Path, v: &Value) -> Result<Vocab> {
    let bad = |msg: String| Error::Tokenizer { path: path.to_path_buf(), msg };
    let obj = v.as_object().ok_or_else(|| bad("the vocabulary is not a JSON object of token -> id".into()))?;
    obj.iter()
        .map(|(k, id)| match id.as_u64().and_then(|x| u32::try_from(x).ok()) {
            Some(id) => Ok((k.clone(), id)),
            None => Err(bad(format!("token {k:?} has id {id}, not a token id"))),
        })
        .collect()
}

fn read_vocab(path: &Path) -> Result<Vocab> {
    let v: Value = crate::error::read_json(path)?;
    vocab_from_value(path, &v)
}

/// `merges.txt`: an optional `#version` line, then one "left right" pair per
/// line in rank order (blank lines are skipped).
fn read_merges(path: &Path) -> Result<Vec<Merge>> {
    let text = read_text(path)?;
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.is_empty() {
            continue;
        }
        match line.split(' ').collect::<Vec<_>>().as_slice() {
            [a, b] => merges.push((a.to_string(), b.to_string())),
            _ => return Err(Error::Tokenizer { path: path.to_path_buf(), msg: format!("line {}: expected two symbols, got {line:?}", n + 1) }),
        }
    }
    Ok(merges)
}

/// The vocabulary, merges and added tokens of a `tokenizers` file. Only the
/// BPE model is read: transformers' `CLIPTokenizer` rebuilds the CLIP
/// normaliser and pre-tokeniser itself whatever the file says.
fn read_tokenizer_json(path: &Path, mentions: &mut Vec<Mention>) -> Result<(Vocab, Vec<Merge>)> {
    let bad = |msg: String| Error::Tokenizer { path: path.to_path_buf(), msg };
    let v: Value = crate::error::read_json(path)?;
    let model = v.get("model").ok_or_else(|| bad("no `model`".into()))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(bad("the model is not BPE; not a CLIP tokenizer".into()));
    }
    let vocab = vocab_from_value(path, model.get("vocab").unwrap_or(&Value::Null))?;
    let mut merges = Vec::new();
    for m in model.get("merges").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let pair = match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(a) => match a.as_slice() {
                [Value::String(x), Value::String(y)] => Some((x.clone(), y.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| bad(format!("merge {m} is not a pair of symbols")))?);
    }
    for tok in v.get("added_tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        if let (Some(m), Some(id)) = (mention(tok), tok.get("id").and_then(Value::as_u64)) {
            let id = u32::try_from(id).map_err(|_| bad(format!("added token id {id} is too large")))?;
            mentions.push(Mention { id: Some(id), ..m });
        }
    }
    Ok((vocab, merges))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny CLIP-style folder: the 512 byte symbols, a few merges, the two
    /// markers; `pad` as in SD1.5 ("<|endoftext|>") or SD2 ("!").
    pub(crate) fn write_tiny(dir: &Path, pad: &str) {
        std::fs::create_dir_all(dir).unwrap();
        // CLIP's order: the byte characters sorted by code point (printable
        // ASCII first, so "!" is 0), then the same with "</w>".
        let mut bytes = bytes_to_unicode();
        bytes.sort();
        let mut vocab: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
        vocab.extend(bytes.iter().map(|c| format!("{c}</w>")));
        let merges = [("h", "i</w>"), ("c", "a"), ("ca", "t</w>"), ("'", "s</w>")];
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let map: serde_json::Map<String, Value> = vocab.iter().enumerate().map(|(i, s)| (s.clone(), Value::from(i))).collect();
        std::fs::write(dir.join("vocab.json"), Value::Object(map).to_string()).unwrap();
        let lines: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
        std::fs::write(dir.join("merges.txt"), format!("#version: 0.2\n{}\n", lines.join("\n"))).unwrap();
        let cfg = serde_json::json!({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad, "unk_token": "<|endoftext|>", "model_max_length": 8});
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    }

    fn tmp(name: &str) -> crate::scratch::ScratchDir {
        crate::scratch::ScratchDir::new(&format!("psotune-clip-tok-{name}")).unwrap()
    }

    #[test]
    fn encodes_truncates_and_pads() {
        let dir = tmp("sd15");
        write_tiny(&dir, "<|endoftext|>");
        let t = ClipTokenizer::from_dir(&dir).unwrap();
        let (hi, cat, s_w, excl_w) = (512, 514, 515, 256);
        assert_eq!((t.bos_id(), t.eos_id(), t.pad_id(), t.max_length()), (516, 517, 517, 8));
        assert_eq!(t.encode("Hi  CAT!").unwrap(), vec![516, hi, cat, excl_w, 517, 517, 517, 517]);
        assert_eq!(t.encode("").unwrap(), vec![516, 517, 517, 517, 517, 517, 517, 517]);
        assert_eq!(t.tokenize("cat's"), vec![cat, s_w]);
        // Longer than 6 tokens: cut to 6, eos kept.
        assert_eq!(t.encode("hi hi hi hi hi hi hi hi").unwrap(), vec![516, hi, hi, hi, hi, hi, hi, 517]);
        // Special tokens in the text are kept whole (not lowercased text).
        assert_eq!(t.tokenize("hi<|endoftext|>hi"), vec![hi, 517, hi]);
        // Other casings are plain text, which the ByteLevel split cuts into
        // "<|", "endoftext", "|>" ('<' = 27, '|</w>' = 347).
        assert_eq!(&t.tokenize("<|ENDOFTEXT|>")[..2], &[27, 347]);
        // NFC: a decomposed é encodes as the composed one.
        assert_eq!(t.tokenize("e\u{301}"), t.tokenize("\u{e9}"));
    }

    #[test]
    fn bang_padding_makes_bang_special() {
        let dir = tmp("sd2");
        write_tiny(&dir, "!");
        let t = ClipTokenizer::from_dir(&dir).unwrap();
        assert_eq!(t.pad_id(), 0);
        assert_eq!(t.encode("hi!").unwrap(), vec![516, 512, 0, 517, 0, 0, 0, 0]);
    }

    /// transformers 5 saves only tokenizer.json + tokenizer_config.json.
    #[test]
    fn a_tokenizer_json_folder_encodes_the_same() {
        let files = tmp("files");
        write_tiny(&files, "!");
        let dir = tmp("json");
        std::fs::create_dir_all(&dir).unwrap();
        let vocab: Value = serde_json::from_str(&std::fs::read_to_string(files.join("vocab.json")).unwrap()).unwrap();
        let merges: Vec<String> = std::fs::read_to_string(files.join("merges.txt")).unwrap().lines().skip(1).map(String::from).collect();
        let added = serde_json::json!([
            {"id": 0, "content": "!", "normalized": false, "special": true},
            {"id": 516, "content": "<|startoftext|>", "normalized": true, "special": true},
            {"id": 517, "content": "<|endoftext|>", "normalized": false, "special": true}]);
        let json = serde_json::json!({"added_tokens": added, "model": {"type": "BPE", "vocab": vocab, "merges": merges}});
        std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
        std::fs::copy(files.join("tokenizer_config.json"), dir.join("tokenizer_config.json")).unwrap();
        let (a, b) = (ClipTokenizer::from_dir(&files).unwrap(), ClipTokenizer::from_dir(&dir).unwrap());
        for text in ["Hi cat's!", "", "hi<|endoftext|>"] {
            assert_eq!(a.encode(text).unwrap(), b.encode(text).unwrap(), "{text:?}");
        }
        // The file marks <|startoftext|> as normalized: matched in any case.
        assert_eq!(b.tokenize("<|STARTOFTEXT|>"), vec![516]);
        assert_ne!(a.tokenize("<|STARTOFTEXT|>"), vec![516]);
    }

    #[test]
    fn broken_files_name_the_file() {
        let dir = tmp("broken");
        write_tiny(&dir, "<|endoftext|>");
        std::fs::write(dir.join("merges.txt"), "#version: 0.2\nh i </w>\n").unwrap();
        let msg = ClipTokenizer::from_dir(&dir).unwrap_err().to_string();
        assert!(msg.contains("merges.txt") && msg.contains("line 2"), "{msg}");
        std::fs::write(dir.join("merges.txt"), "x y\n").unwrap();
        let msg = ClipTokenizer::from_dir(&dir).unwrap_err().to_string();
        assert!(msg.contains("merges.txt") && msg.contains("\"x\""), "{msg}");
        std::fs::remove_file(dir.join("vocab.json")).unwrap();
        let msg = ClipTokenizer::from_dir(&dir).unwrap_err().to_string();
        assert!(msg.contains("vocab.json"), "{msg}");
        write_tiny(&dir, "<pad>");
        let msg = ClipTokenizer::from_dir(&dir).unwrap_err().to_string();
        assert!(msg.contains("<pad>"), "{msg}");
    }
}
