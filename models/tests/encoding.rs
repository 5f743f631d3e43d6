//! Pair encoding: layout, spans, scoring position and truncation, per family.

use std::path::{Path, PathBuf};

use models::{Checkpoint, PaddedBatch, PairEncoder};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn minilm() -> Checkpoint {
    let dir = std::env::var_os("MRANK_BASE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/all-minilm-l6-v2")
        });
    Checkpoint::open(&dir).unwrap_or_else(|e| panic!("{e}: run scripts/setup.sh"))
}

#[test]
fn bert_layout_and_spans() {
    let ck = minilm();
    let enc = PairEncoder::new(&ck, 512).unwrap();
    let pair = enc
        .encode("what is a flea", "fleas are small insects", None)
        .unwrap();
    let cls = ck.tokenizer.token_to_id("[CLS]").unwrap();
    let sep = ck.tokenizer.token_to_id("[SEP]").unwrap();
    assert_eq!(pair.input_ids[0], cls);
    assert_eq!(pair.input_ids[pair.query.end()], sep);
    assert_eq!(*pair.input_ids.last().unwrap(), sep);
    assert_eq!(pair.passage.start, pair.query.end() + 1);
    assert_eq!(pair.passage.end(), pair.len() - 1);
    assert_eq!(pair.score_pos, 0);
    assert!(!pair.truncated);
    // Token types: 0 through the first [SEP], 1 after.
    assert!(pair.token_type_ids[..pair.passage.start]
        .iter()
        .all(|&t| t == 0));
    assert!(pair.token_type_ids[pair.passage.start..]
        .iter()
        .all(|&t| t == 1));
    // Same ids as the tokenizer's own pair encoding.
    let reference = ck
        .tokenizer
        .encode(("what is a flea", "fleas are small insects"), true)
        .unwrap();
    assert_eq!(pair.input_ids, reference.get_ids());
    assert_eq!(pair.token_type_ids, reference.get_type_ids());
}

#[test]
fn isolated_segments_are_two_lone_texts() {
    let ck = minilm();
    let enc = PairEncoder::new(&ck, 24)
        .unwrap()
        .with_isolated_segments(true)
        .unwrap();
    assert!(enc.isolated_segments());
    let (query, passage) = ("what is a flea", "fleas are small insects ".repeat(10));
    let pair = enc.encode(query, &passage, None).unwrap();
    let segment = pair.passage.start - 1;
    // `[CLS] q [SEP]` then `[CLS] p [SEP]`, each what the tokenizer gives the lone text.
    let lone = |text: &str, max: usize| {
        let mut ids = ck.tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        if ids.len() > max {
            ids.truncate(max - 1);
            ids.push(*pair.input_ids.last().unwrap());
        }
        ids
    };
    assert_eq!(pair.input_ids[..segment], lone(query, usize::MAX)[..]);
    assert_eq!(pair.input_ids[segment..], lone(&passage, 24 - segment)[..]);
    assert_eq!(
        pair.len(),
        24,
        "the passage fills max_length with the 4 template tokens"
    );
    assert!(pair.truncated);
    // Four template tokens at the reference lengths too.
    let joint = PairEncoder::new(&ck, 24).unwrap();
    assert_eq!(
        enc.reference_lengths().prefix,
        joint.reference_lengths().prefix + 1
    );
    // Decoders have no isolated form.
    let llama = Checkpoint::open(fixture("tiny-llama")).unwrap();
    let err = PairEncoder::new(&llama, 64)
        .unwrap()
        .with_isolated_segments(true)
        .err()
        .expect("decoders refuse isolation");
    assert!(err.to_string().contains("BERT"), "{err}");
}

#[test]
fn truncation_cuts_the_passage_first_and_caps_the_query() {
    let ck = minilm();
    let enc = PairEncoder::new(&ck, 64).unwrap();
    let long = "word ".repeat(200);
    // Short query, long passage: the passage fills what is left.
    let p = enc.encode("short query", &long, None).unwrap();
    assert_eq!(p.len(), 64);
    assert_eq!(p.query.len, 2);
    assert!(p.truncated);
    // Long query: capped at 3/4 of the 61 tokens left by the template.
    let q = enc.encode(&long, &long, None).unwrap();
    assert_eq!(q.query.len, 61 * 3 / 4);
    assert_eq!(q.len(), 64);
    // max_tokens_per_doc caps the passage further.
    let capped = enc.encode("short query", &long, Some(10)).unwrap();
    assert_eq!(capped.passage.len, 10);
}

/// A configuration's passage cap, applied to an encoded pair, gives exactly the pair
/// the encoder makes with that cap (the runtime caps pairs the server encoded once).
#[test]
fn passage_cap_of_an_encoded_pair_equals_encoding_with_the_cap() {
    let passage = "the quick brown fox jumps over the lazy dog near the river bank ".repeat(4);
    let mut encoders = vec![
        ("minilm", PairEncoder::new(&minilm(), 128).unwrap()),
        (
            "minilm isolated",
            PairEncoder::new(&minilm(), 128)
                .unwrap()
                .with_isolated_segments(true)
                .unwrap(),
        ),
    ];
    for family in ["tiny-llama", "tiny-gemma2"] {
        let ck = Checkpoint::open(fixture(family)).unwrap();
        encoders.push((family, PairEncoder::new(&ck, 256).unwrap()));
    }
    for (name, enc) in &encoders {
        let whole = enc.encode("what is a fox", &passage, None).unwrap();
        assert!(
            whole.passage.len > 12,
            "{name}: the passage must be long enough to cut"
        );
        for cap in [1, 5, 12] {
            let want = enc.encode("what is a fox", &passage, Some(cap)).unwrap();
            assert_eq!(whole.with_passage_cap(cap), want, "{name}, cap {cap}");
        }
        // A cap at or over the passage's length changes nothing.
        assert_eq!(whole.with_passage_cap(whole.passage.len), whole, "{name}");
        // A request that keeps the passage's end (`truncation_direction: "left"`) is
        // capped from the start too.
        let tail = enc
            .encode_truncating("what is a fox", &passage, None, true)
            .unwrap();
        for cap in [1, 5, 12] {
            let want = enc
                .encode_truncating("what is a fox", &passage, Some(cap), true)
                .unwrap();
            assert_eq!(
                tail.with_passage_cap(cap),
                want,
                "{name}, cap {cap}, end kept"
            );
            assert_ne!(
                want,
                whole.with_passage_cap(cap),
                "{name}: the two ends differ"
            );
        }
    }
}

/// A max length past the position table truncates to the table (tiny-bert has 64
/// positions) instead of producing pairs the model cannot embed.
#[test]
fn max_length_never_exceeds_the_position_table() {
    let ck = Checkpoint::open(fixture("tiny-bert")).unwrap();
    let enc = PairEncoder::new(&ck, 256).unwrap();
    assert_eq!(enc.max_length, 64);
    let long = "tok40 ".repeat(200);
    let p = enc.encode("tok41 tok42", &long, None).unwrap();
    assert_eq!(p.len(), 64);
    assert!(p.truncated);
}

#[test]
fn decoder_template_spans_and_scoring_position() {
    for family in ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-gemma2"] {
        let ck = Checkpoint::open(fixture(family)).unwrap();
        let enc = PairEncoder::new(&ck, 64).unwrap();
        let pair = enc
            .encode("what is a flea", "a flea is an insect", None)
            .unwrap();
        let prompt = pair.prompt.expect("decoders have a prompt span");
        assert_eq!(pair.score_pos, pair.len() - 1, "{family}");
        assert_eq!(prompt.end(), pair.len(), "{family}");
        assert!(
            pair.query.end() <= pair.passage.start && pair.passage.end() <= prompt.start,
            "{family}"
        );
        assert!(prompt.len > 0 && pair.passage.len > 0, "{family}");
        let bos = match &ck.config {
            models::ModelConfig::Llama(c) => c.bos_token_id,
            models::ModelConfig::Gemma2(c) => c.bos_token_id,
            _ => unreachable!(),
        };
        if let Some(bos) = bos {
            assert_eq!(pair.input_ids[0], bos, "{family}");
        }
    }
}

#[test]
fn padded_batch_masks_and_spans() {
    let ck = minilm();
    let enc = PairEncoder::new(&ck, 128).unwrap();
    let a = enc.encode("q", "a short passage", None).unwrap();
    let b = enc
        .encode(
            "a longer query here",
            "a rather longer passage with more words in it",
            None,
        )
        .unwrap();
    let batch = PaddedBatch::new(&[a.clone(), b.clone()], enc.pad_id);
    assert_eq!(batch.seq_len, b.len());
    assert_eq!(batch.lengths, vec![a.len(), b.len()]);
    let mask = batch.attention_mask();
    assert_eq!(mask[..batch.seq_len].iter().sum::<u32>() as usize, a.len());
    assert_eq!(&batch.input_ids[..a.len()], a.input_ids.as_slice());
    assert!(batch.input_ids[a.len()..batch.seq_len]
        .iter()
        .all(|&t| t == enc.pad_id));
}

/// A request encodes its query once: the same pairs as encoding each pair alone, for an
/// encoder and a decoder template, and the query's length before any cut.
#[test]
fn a_request_encodes_like_its_pairs_and_reports_the_query_length() {
    let long = "word ".repeat(200);
    let passages = ["fleas are small insects".to_string(), long.clone()];
    for (name, enc) in [
        ("bert", PairEncoder::new(&minilm(), 64).unwrap()),
        (
            "llama",
            PairEncoder::new(&Checkpoint::open(fixture("tiny-llama")).unwrap(), 64).unwrap(),
        ),
    ] {
        for (query, cap, keep_end) in [
            ("what is a flea", None, false),
            (long.as_str(), Some(5), true),
        ] {
            let request = enc.encode_request(query, &passages, cap, keep_end).unwrap();
            for (pair, passage) in request.pairs.iter().zip(&passages) {
                let alone = enc
                    .encode_truncating(query, passage, cap, keep_end)
                    .unwrap();
                assert_eq!(pair, &alone, "{name}");
            }
            assert!(request.query_tokens >= request.pairs[0].query.len, "{name}");
            assert!(!request.query_is_blank, "{name}");
            assert_eq!(
                request.query_tokens > enc.query_cap(),
                query == long,
                "{name}: {} tokens, cap {}",
                request.query_tokens,
                enc.query_cap()
            );
        }
    }
}

/// A query whose text gives no token is blank: for an encoder (zero-width and control
/// characters, which BERT's normalizer drops), and for a decoder, whose template adds
/// `A: ` before the query (here whitespace, all the fixture's word-level tokenizer
/// drops), where the template's own tokens must not count.
#[test]
fn a_query_without_tokens_is_blank_for_every_template() {
    let passages = ["a flea is an insect"];
    let bert = PairEncoder::new(&minilm(), 64).unwrap();
    let llama = PairEncoder::new(&Checkpoint::open(fixture("tiny-llama")).unwrap(), 64).unwrap();
    for (enc, blank, text) in [
        (&bert, "\u{200b}\u{0000}", "flea"),
        (&llama, " \t ", "flea"),
    ] {
        let r = enc.encode_request(blank, &passages, None, false).unwrap();
        assert!(r.query_is_blank, "{blank:?}");
        assert!(
            !enc.encode_request(text, &passages, None, false)
                .unwrap()
                .query_is_blank
        );
    }
    let r = llama
        .encode_request(" \t ", &passages, None, false)
        .unwrap();
    assert!(r.query_tokens > 0, "the template's `A:` is still there");
}

/// `truncated` reports cuts forced by the model's length only: a short passage cut by
/// `max_passage_tokens` is not truncated, a passage over the length is.
#[test]
fn a_cut_asked_for_is_not_truncation() {
    let enc = PairEncoder::new(&minilm(), 64).unwrap();
    let asked = enc
        .encode(
            "what is a flea",
            "fleas are small wingless insects",
            Some(2),
        )
        .unwrap();
    assert_eq!(asked.passage.len, 2);
    assert!(!asked.truncated);
    let forced = enc
        .encode("what is a flea", &"word ".repeat(200), Some(2))
        .unwrap();
    assert!(forced.truncated);
}
