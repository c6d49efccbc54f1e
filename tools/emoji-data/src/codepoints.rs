//! Concept keys: the Unicode codepoint sequence an emoji is drawn for.
//!
//! The three sets spell the same emoji differently: Twemoji file names drop
//! leading zeros and most FE0F, Noto's `unified` and OpenMoji's `hexcode` keep
//! FE0F and zero-pad ("0023-FE0F-20E3"). Dropping the variation selectors and
//! printing every codepoint as lowercase hex padded to 4 digits makes one key
//! per emoji, shared by all styles ("1f436", "0023-20e3", "2764").

use anyhow::{bail, Result};

/// Emoji (FE0F) and text (FE0E) presentation selectors: they pick a rendering,
/// not a different emoji.
fn is_variation_selector(c: u32) -> bool {
    c == 0xFE0F || c == 0xFE0E
}

/// Fitzpatrick skin-tone modifiers U+1F3FB..U+1F3FF.
fn is_skin_tone(c: u32) -> bool {
    (0x1F3FB..=0x1F3FF).contains(&c)
}

fn format_key(cps: impl Iterator<Item = u32>) -> String {
    cps.filter(|&c| !is_variation_selector(c))
        .map(|c| format!("{c:04x}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// Concept key of an emoji given as text ("🐶" -> "1f436").
pub fn key_from_emoji(emoji: &str) -> String {
    format_key(emoji.chars().map(u32::from))
}

/// Concept key of a hex sequence such as "0023-FE0F-20E3" or "1f3f3-fe0f" (also
/// accepts '_' or ' ' as separators).
pub fn key_from_hex(hex: &str) -> Result<String> {
    let mut cps = Vec::new();
    for part in hex.split(['-', '_', ' ']).filter(|p| !p.is_empty()) {
        match u32::from_str_radix(part, 16) {
            Ok(c) if char::from_u32(c).is_some() => cps.push(c),
            _ => bail!("bad codepoint {part:?} in {hex:?}"),
        }
    }
    if cps.is_empty() {
        bail!("empty codepoint sequence {hex:?}");
    }
    Ok(format_key(cps.into_iter()))
}

/// True for a skin-toned variant: a tone modifier applied to another
/// codepoint. The bare tone swatches (a modifier alone) are their own emoji.
pub fn is_toned_variant(key: &str) -> bool {
    let cps: Vec<u32> = key
        .split('-')
        .filter_map(|p| u32::from_str_radix(p, 16).ok())
        .collect();
    cps.len() > 1 && cps.iter().any(|&c| is_skin_tone(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_across_spellings() {
        assert_eq!(key_from_emoji("🐶"), "1f436");
        assert_eq!(key_from_hex("1F436").unwrap(), "1f436");
        // keycap: Twemoji's file is "23-20e3", Noto/OpenMoji say "0023-FE0F-20E3".
        assert_eq!(key_from_hex("23-20e3").unwrap(), "0023-20e3");
        assert_eq!(key_from_hex("0023-FE0F-20E3").unwrap(), "0023-20e3");
        assert_eq!(key_from_emoji("#\u{FE0F}\u{20E3}"), "0023-20e3");
        // red heart with and without the emoji presentation selector.
        assert_eq!(key_from_emoji("❤️"), "2764");
        assert_eq!(key_from_emoji("❤"), "2764");
        assert_eq!(key_from_hex("2764-FE0F").unwrap(), "2764");
        // rainbow flag: FE0F inside a ZWJ sequence.
        assert_eq!(
            key_from_hex("1F3F3-FE0F-200D-1F308").unwrap(),
            "1f3f3-200d-1f308"
        );
        assert_eq!(
            key_from_hex("1f3f3_fe0f_200d_1f308").unwrap(),
            "1f3f3-200d-1f308"
        );
        assert_eq!(key_from_emoji("\u{A9}"), "00a9");
    }

    #[test]
    fn rejects_bad_hex() {
        assert!(key_from_hex("").is_err());
        assert!(key_from_hex("zz").is_err());
        assert!(key_from_hex("D800").is_err());
    }

    #[test]
    fn skin_tones() {
        assert!(is_toned_variant("1f44b-1f3fd"));
        assert!(is_toned_variant(
            &key_from_hex("1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FC").unwrap()
        ));
        assert!(!is_toned_variant("1f44b"));
        assert!(!is_toned_variant("1f3fb"));
    }
}
