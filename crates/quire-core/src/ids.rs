//! Idempotency keys, deterministic ids and checksums.
//!
//! Everything here is a pure function of its input, so a replay, a restart or a
//! resubmission computes the same key and the dedup in every stage recognises it.

use sha2::{Digest, Sha256};

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefix each part so ("ab","c") and ("a","bc") hash apart.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// The default idempotency key of a submission: a hash of what it asks for (`scope`:
/// dataset, task, languages) and of its documents' ids and texts. The same documents
/// sent again for the same work add nothing; sent for other work, they are new work.
pub fn content_key<'a>(scope: &str, documents: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut hasher = Sha256::new();
    hasher.update((scope.len() as u64).to_be_bytes());
    hasher.update(scope.as_bytes());
    for (id, text) in documents {
        for part in [id.as_bytes(), text.as_bytes()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// The idempotency key of one block: derived from the submission's key and from how
/// the document was split (`max_block_chars`), so resubmitting the same submission
/// yields the same block keys, and a resubmission split otherwise (another
/// `QUIRE_MAX_BLOCK_CHARS`) never gives a block of one split the id of a block of the
/// other.
pub fn block_idempotency_key(submission_key: &str, document_id: &str, max_block_chars: usize, sequence: u32) -> String {
    sha256_hex(&[submission_key.as_bytes(), document_id.as_bytes(), &(max_block_chars as u64).to_be_bytes(), &sequence.to_be_bytes()])
}

/// A block's id: short, stable and derived from its idempotency key.
pub fn block_id(block_idempotency_key: &str) -> String {
    format!("blk-{}", &block_idempotency_key[..24])
}

/// Checksum of a text as stored in records (`sha256:` + hex).
pub fn checksum(text: &str) -> String {
    format!("sha256:{}", sha256_hex(&[text.as_bytes()]))
}

/// A fingerprint of several texts taken together (`sha256:` + hex; each part is
/// length-prefixed, so parts never run into each other).
pub fn fingerprint(parts: &[&str]) -> String {
    let bytes: Vec<&[u8]> = parts.iter().map(|part| part.as_bytes()).collect();
    format!("sha256:{}", sha256_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_and_distinct() {
        let a = block_idempotency_key("k", "doc", 600, 0);
        assert_eq!(a, block_idempotency_key("k", "doc", 600, 0));
        assert_ne!(a, block_idempotency_key("k", "doc", 600, 1));
        assert_ne!(a, block_idempotency_key("k2", "doc", 600, 0));
        assert_ne!(a, block_idempotency_key("k", "doc", 300, 0), "another split, another block");
        assert_eq!(block_id(&a).len(), 28);
    }

    #[test]
    fn content_key_separates_boundaries() {
        assert_ne!(content_key("s", [("ab", "c")]), content_key("s", [("a", "bc")]));
        assert_eq!(content_key("s", [("a", "b")]), content_key("s", [("a", "b")]));
        assert_ne!(content_key("d1|translate|fr", [("a", "b")]), content_key("d1|translate|de", [("a", "b")]));
    }

    #[test]
    fn fingerprints_keep_their_parts_apart() {
        assert_eq!(fingerprint(&["ab", "c"]), fingerprint(&["ab", "c"]));
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert!(fingerprint(&[]).starts_with("sha256:"));
    }

    #[test]
    fn checksum_changes_with_text() {
        assert_ne!(checksum("hello"), checksum("hello!"));
        assert!(checksum("x").starts_with("sha256:"));
    }
}
