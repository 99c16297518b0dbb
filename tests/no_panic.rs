//! Robustness: no input makes `check` panic, hang or allocate absurdly. A deterministic fuzz
//! loop feeds random bytes, truncated and mutated example files and mutated data files to the
//! checker and requires a clean result (success or diagnostics) every time.

use kpc::diag::SourceMap;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// Cases per family; four families make well over 10,000 cases.
const CASES: usize = 2_600;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kpc-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).expect("scratch dir");
    dir
}

/// Runs the checker on `file`; a panic fails the test with the input that caused it.
fn check_no_panic(file: &Path, what: &dyn Fn() -> String) {
    let result = std::panic::catch_unwind(|| {
        let mut sources = SourceMap::new();
        match kpc::check::check_file(file, &mut sources) {
            Ok(_) => {}
            Err(diags) => {
                assert!(!diags.is_empty(), "an error without a diagnostic");
                // Rendering must not panic either.
                let _ = kpc::diag::render_all(&diags, &sources);
            }
        }
    });
    if result.is_err() {
        panic!("check panicked on {}", what());
    }
}

fn examples() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("examples").expect("examples dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "train") {
            let text = std::fs::read_to_string(&p).expect("example text");
            v.push((p.file_name().expect("name").to_string_lossy().into_owned(), text));
        }
    }
    v.sort();
    v
}

/// Copies `examples/data` into `dir/data` so mutated data never touches the real files.
fn copy_data(dir: &Path) {
    for e in std::fs::read_dir("examples/data").expect("examples/data") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, dir.join("data").join(p.file_name().expect("name"))).expect("copy data");
    }
}

const TOKENS: &[&str] = &[
    "(", ")", "[", "]", "{", "}", ",", "=", ":", "|>", "+", "-", "*", "/", "@", ".", "\"", "#", "\n", " ", "0", "1", "-1",
    "1e9", "1e999", "0.5", "rest", "none", "true", "x", "y", "seq", "linear", "gru", "dropout", "last", "input",
    "data", "model", "loss", "train", "\\", "\u{0}", "é", "99999999999999999999",
];

fn mutate_text(rng: &mut ChaCha8Rng, text: &str) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for _ in 0..rng.random_range(1..6) {
        if s.is_empty() {
            break;
        }
        let at = rng.random_range(0..s.len());
        match rng.random_range(0..4) {
            0 => {
                let end = (at + rng.random_range(1..20)).min(s.len());
                s.drain(at..end);
            }
            1 => {
                let tok = TOKENS[rng.random_range(0..TOKENS.len())];
                for (k, c) in tok.chars().enumerate() {
                    s.insert(at + k, c);
                }
            }
            2 => {
                let from = rng.random_range(0..s.len());
                let len = rng.random_range(1..30).min(s.len() - from);
                let piece: Vec<char> = s[from..from + len].to_vec();
                for (k, c) in piece.into_iter().enumerate() {
                    s.insert(at + k, c);
                }
            }
            _ => s[at] = char::from(rng.random_range(32u8..127)),
        }
    }
    s.into_iter().collect()
}

fn mutate_bytes(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        if bytes.is_empty() {
            return;
        }
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..5) {
            0 => bytes[at] = rng.random(),
            1 => bytes.truncate(at),
            2 => {
                let tok: &[u8] = [b"," as &[u8], b"\n", b"\r\n", b"\"", b"nan", b"-", b"1e40", b"{", b"}", b"\xff"][rng.random_range(0..10)];
                bytes.splice(at..at, tok.iter().copied());
            }
            3 => {
                let end = (at + rng.random_range(1..200)).min(bytes.len());
                bytes.drain(at..end);
            }
            _ => {
                // Duplicate a line somewhere else.
                let end = bytes[at..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| at + p + 1);
                let line: Vec<u8> = bytes[at..end].to_vec();
                let to = rng.random_range(0..bytes.len());
                bytes.splice(to..to, line);
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let dir = scratch("bytes");
    let file = dir.join("job.train");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for i in 0..CASES {
        let len = rng.random_range(0..400);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 2 == 0 {
            // Mostly-printable noise reaches deeper into the grammar.
            for b in bytes.iter_mut() {
                *b = TOKENS.concat().as_bytes()[usize::from(*b) % TOKENS.concat().len()];
            }
        }
        std::fs::write(&file, &bytes).expect("write case");
        check_no_panic(&file, &|| format!("{bytes:?}"));
    }
}

#[test]
fn truncated_examples_never_panic() {
    let dir = scratch("truncated");
    copy_data(&dir);
    let file = dir.join("job.train");
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let examples = examples();
    for _ in 0..CASES {
        let (_, text) = &examples[rng.random_range(0..examples.len())];
        let mut cut = rng.random_range(0..=text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        std::fs::write(&file, &text[..cut]).expect("write case");
        check_no_panic(&file, &|| text[..cut].to_string());
    }
}

#[test]
fn mutated_examples_never_panic() {
    let dir = scratch("mutated");
    copy_data(&dir);
    let file = dir.join("job.train");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let examples = examples();
    for _ in 0..CASES {
        let (_, text) = &examples[rng.random_range(0..examples.len())];
        let mutated = mutate_text(&mut rng, text);
        std::fs::write(&file, &mutated).expect("write case");
        check_no_panic(&file, &|| mutated.clone());
    }
}

#[test]
fn mutated_data_files_never_panic() {
    let dir = scratch("data");
    copy_data(&dir);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // Small data files keep each case fast; the jobs read them like the examples do.
    let jobs: &[(&str, &str, &str)] = &[
        ("iris.train", "iris_train.csv", "data/iris_train.csv"),
        ("breast_cancer.train", "breast_cancer_test.csv", "data/breast_cancer_train.csv"),
        ("words_gru.train", "words_test.jsonl", "data/words_train.jsonl"),
    ];
    let originals: Vec<Vec<u8>> =
        jobs.iter().map(|(_, src, _)| std::fs::read(Path::new("examples/data").join(src)).expect("data file")).collect();
    let examples = examples();
    for i in 0..CASES {
        let k = i % jobs.len();
        let (job, _, target) = jobs[k];
        let text = &examples.iter().find(|(n, _)| n == job).expect("example").1;
        // Cut big files to a prefix of lines so 10,000 cases stay quick.
        let mut bytes = originals[k].clone();
        let keep = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(60).map_or(bytes.len(), |(p, _)| p + 1);
        bytes.truncate(keep);
        mutate_bytes(&mut rng, &mut bytes);
        std::fs::write(dir.join(target), &bytes).expect("write data");
        let file = dir.join(job);
        std::fs::write(&file, text).expect("write job");
        check_no_panic(&file, &|| format!("{job} with data {:?}", String::from_utf8_lossy(&bytes)));
    }
}
