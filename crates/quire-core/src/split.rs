//! Splits a document into blocks.
//!
//! Paragraphs (separated by blank lines) are packed into blocks of at most `max_chars`
//! characters; a paragraph longer than that is cut at the last whitespace before the
//! limit (or at the limit if it has none). The split depends only on the text and the
//! limit, so replays and `quire verify` recompute the same blocks.

/// Default largest block, in characters.
pub const DEFAULT_MAX_BLOCK_CHARS: usize = 600;

/// The text of each block of `text`, in order. Empty documents have no blocks.
pub fn split_blocks(text: &str, max_chars: usize) -> Vec<String> {
    assert!(max_chars > 0, "max_chars must be positive");
    let mut blocks = Vec::new();
    let mut current = String::new();
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        for piece in cut(paragraph, max_chars) {
            let extra = if current.is_empty() { 0 } else { 2 };
            if !current.is_empty() && current.chars().count() + extra + piece.chars().count() > max_chars {
                blocks.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push_str("\n\n");
            }
            current.push_str(piece);
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    blocks
}

/// Cuts one paragraph into pieces of at most `max_chars` characters.
fn cut(mut paragraph: &str, max_chars: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    while paragraph.chars().count() > max_chars {
        let limit = paragraph.char_indices().nth(max_chars).map(|(i, _)| i).unwrap_or(paragraph.len());
        // A space right at the limit is a fine place to cut too.
        let at = if paragraph[limit..].starts_with(char::is_whitespace) {
            limit
        } else {
            paragraph[..limit].rfind(char::is_whitespace).filter(|&i| i > 0).unwrap_or(limit)
        };
        pieces.push(paragraph[..at].trim_end());
        paragraph = paragraph[at..].trim_start();
    }
    if !paragraph.is_empty() {
        pieces.push(paragraph);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packs_paragraphs_up_to_the_limit() {
        let blocks = split_blocks("one\n\ntwo\n\nthree", 8);
        assert_eq!(blocks, vec!["one\n\ntwo", "three"]);
    }

    #[test]
    fn cuts_long_paragraphs_at_whitespace() {
        assert_eq!(split_blocks("aaaa bbbb cccc", 9), vec!["aaaa bbbb", "cccc"]);
        assert_eq!(split_blocks("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
    }

    #[test]
    fn empty_documents_have_no_blocks() {
        assert!(split_blocks(" \n\n \n", 10).is_empty());
    }

    /// The split of `text`, checked: no block empty or over `max`, every non-space
    /// character kept in order.
    fn checked_split(text: &str, max: usize) -> Result<Vec<String>, TestCaseError> {
        let blocks = split_blocks(text, max);
        for b in &blocks {
            prop_assert!(b.chars().count() <= max, "block {b:?} over {max}");
            prop_assert!(!b.trim().is_empty());
        }
        let words = |s: &str| s.split_whitespace().collect::<String>();
        prop_assert_eq!(words(&blocks.join(" ")), words(text));
        Ok(blocks)
    }

    proptest! {
        #[test]
        fn blocks_respect_limit_and_keep_every_word(text in "[a-zé ]{0,80}(\n\n[a-z ]{0,80}){0,5}", max in 5usize..50) {
            let blocks = checked_split(&text, max)?;
            prop_assert_eq!(split_blocks(&text, max), blocks);
        }

        /// Any text at all (controls, combining marks, every kind of whitespace): the
        /// splitter never panics, keeps every non-space character in order, and never
        /// makes an empty or oversized block.
        #[test]
        fn any_text_splits_without_loss(text in any::<String>(), max in 1usize..40) {
            checked_split(&text, max)?;
        }
    }
}
