//! Screens records that come from outside before any work is done on them.
//!
//! A record can be valid Avro and still be bad input: fields empty or long enough to
//! bloat every header and key they are copied into, a document index outside its
//! submission, control characters no text holds, a block id that is not the one its
//! idempotency key gives (a dedup key is built from the id, so a forged id could collide
//! with another block's key). Each check names the field and what is wrong, so the
//! record is quarantined with a reason instead of flowing on.

use crate::records::{Block, DatasetSubmission};
use crate::{ids, Failure};

/// Longest id, key, task or language a record may carry, in bytes.
pub const MAX_FIELD_BYTES: usize = 256;

/// At most `max_chars` characters of `text`, for messages about hostile input.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
        None => format!("{text:?}"),
    }
}

/// Longest failure reason written to headers and quarantine records, in characters.
pub const MAX_REASON_CHARS: usize = 1_000;

/// `reason` cut to [`MAX_REASON_CHARS`]: a decoder's message can quote a whole value.
pub fn bounded_reason(reason: String) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &reason[..cut], reason.len()),
        None => reason,
    }
}

fn field(name: &str, value: &str, required: bool) -> Result<(), Failure> {
    if required && value.trim().is_empty() {
        return Err(Failure::data("invalid-field", format!("field {name} is empty")));
    }
    if value.len() > MAX_FIELD_BYTES {
        return Err(Failure::data(
            "invalid-field",
            format!("field {name} is {} bytes long, over the limit of {MAX_FIELD_BYTES}: {}", value.len(), excerpt(value, 40)),
        ));
    }
    Ok(())
}

/// The first character no document text should hold: C0 controls other than tab, line
/// feed, carriage return and form feed (page breaks of extracted PDFs), DEL, and C1
/// controls. Returns its character position and code point.
pub fn first_control_character(text: &str) -> Option<(usize, char)> {
    text.chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{0c}'))
}

/// Checks a submission's fields before it is split.
pub fn submission(s: &DatasetSubmission) -> Result<(), Failure> {
    field("dataset_id", &s.dataset_id, true)?;
    field("document_id", &s.document_id, true)?;
    field("idempotency_key", &s.idempotency_key, true)?;
    field("task", &s.task, true)?;
    field("request_id", &s.request_id, false)?;
    for (name, language) in [("source_language", &s.source_language), ("target_language", &s.target_language)] {
        if let Some(language) = language {
            field(name, language, true)?;
        }
    }
    if s.document_count < 1 || s.document_index < 0 || s.document_index >= s.document_count {
        return Err(Failure::data(
            "invalid-field",
            format!("document_index {} is outside a submission of document_count {}", s.document_index, s.document_count),
        ));
    }
    if let Some((at, c)) = first_control_character(&s.text) {
        return Err(Failure::data(
            "control-characters",
            format!("document {} holds control character U+{:04X} at character {at}", excerpt(&s.document_id, 40), c as u32),
        ));
    }
    Ok(())
}

/// Checks that a block record is one a claimer made: its id is the one its idempotency
/// key gives (so no dedup key built from it can collide with another block's) and its
/// fields are within bounds.
pub fn block(b: &Block) -> Result<(), Failure> {
    let key = &b.idempotency_key;
    if key.len() != 64 || !key.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Failure::data("forged-block", format!("block {} has idempotency key {}, not 64 hex digits", excerpt(&b.block_id, 40), excerpt(key, 40))));
    }
    if b.block_id != ids::block_id(key) {
        return Err(Failure::data(
            "forged-block",
            format!("block id {} is not the id of its idempotency key ({})", excerpt(&b.block_id, 40), ids::block_id(key)),
        ));
    }
    field("dataset_id", &b.dataset_id, true)?;
    field("document_id", &b.document_id, true)?;
    field("task", &b.task, true)?;
    field("request_id", &b.request_id, false)?;
    if b.generation < 0 || b.attempt < 0 {
        return Err(Failure::data("invalid-field", format!("block {} has generation {} and attempt {}", b.block_id, b.generation, b.attempt)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn good() -> DatasetSubmission {
        DatasetSubmission {
            dataset_id: "d".into(),
            document_id: "doc-1".into(),
            idempotency_key: "k".into(),
            document_index: 0,
            document_count: 1,
            text: "Page one.\u{0c}Page two,\twith a tab.\r\n".into(),
            source_language: None,
            target_language: Some("fr".into()),
            task: "translate".into(),
            request_id: "".into(),
            submitted_at_ms: 0,
        }
    }

    #[test]
    fn ordinary_text_with_page_breaks_passes() {
        submission(&good()).unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: [(DatasetSubmission, &str); 5] = [
            (DatasetSubmission { dataset_id: " ".into(), ..good() }, "field dataset_id is empty"),
            (DatasetSubmission { idempotency_key: "k".repeat(300), ..good() }, "field idempotency_key is 300 bytes"),
            (DatasetSubmission { document_index: 3, document_count: 3, ..good() }, "document_index 3 is outside"),
            (DatasetSubmission { text: "a\u{0}b".into(), ..good() }, "U+0000 at character 1"),
            (DatasetSubmission { text: "bell\u{7}".into(), ..good() }, "U+0007 at character 4"),
        ];
        for (bad, expected) in cases {
            let failure = submission(&bad).unwrap_err();
            assert!(failure.reason.contains(expected), "{} should contain {expected}", failure.reason);
        }
    }

    #[test]
    fn blocks_must_carry_the_id_of_their_key() {
        let key = ids::block_idempotency_key("k", "doc", 600, 0);
        let block = Block { idempotency_key: key.clone(), block_id: ids::block_id(&key), ..Block::fixture("x", "text", crate::BlockState::Queued) };
        super::block(&block).unwrap();
        let forged = Block { block_id: format!("{}#g1", block.block_id), ..block.clone() };
        assert_eq!(super::block(&forged).unwrap_err().cause, "forged-block");
        let short = Block { idempotency_key: "abc".into(), ..block };
        assert!(super::block(&short).unwrap_err().reason.contains("not 64 hex digits"));
    }

    #[test]
    fn reasons_are_bounded() {
        assert_eq!(bounded_reason("short".into()), "short");
        let long = bounded_reason("ü".repeat(5_000));
        assert!(long.chars().count() < MAX_REASON_CHARS + 40 && long.ends_with("(10000 bytes in all)"), "{long}");
    }

    #[test]
    fn excerpts_are_bounded_and_cut_on_characters() {
        assert_eq!(excerpt("short", 10), "\"short\"");
        let long = "é".repeat(100);
        assert!(excerpt(&long, 3).starts_with("\"ééé\"…"), "{}", excerpt(&long, 3));
    }

    proptest! {
        /// Any submission is screened without a panic, and a refusal always names a field
        /// or the text.
        #[test]
        fn any_submission_is_screened(dataset_id in "\\PC{0,300}", text in any::<String>(), index in -2i32..4, count in -1i32..4) {
            let s = DatasetSubmission { dataset_id, text, document_index: index, document_count: count, ..good() };
            if let Err(failure) = submission(&s) {
                prop_assert!(failure.reason.contains("field") || failure.reason.contains("document"), "{}", failure.reason);
            }
        }
    }
}
