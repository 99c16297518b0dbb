//! The job's state_dict: initialisation with PyTorch's schemes from kpc's own generator,
//! and safetensors checkpoints with PyTorch's names, shapes and dtypes.

use crate::check::{Init, Job, LayerKind, StateTensor, TensorRole};
use crate::diag::Diagnostic;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype as StDtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use std::path::Path;

/// The three independent random streams derived from a job's seed (LANGUAGE.md §8):
/// ChaCha8 seeded with `seed`, on streams 0 (initialisation), 1 (shuffling) and 2 (the
/// dropout key), so turning shuffling on does not change the initial weights.
pub fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

pub const INIT_STREAM: u64 = 0;
pub const SHUFFLE_STREAM: u64 = 1;
pub const DROPOUT_STREAM: u64 = 2;

/// Values of every state tensor, in state order (num_batches_tracked as one value).
#[derive(Debug, Clone, PartialEq)]
pub struct StateValues {
    pub tensors: Vec<Vec<f32>>,
    /// Training forward passes so far (batchnorm's `num_batches_tracked`).
    pub batches_tracked: i64,
}

/// Initial values: in layer declaration order, then state_dict order, row-major.
/// `U(−b, b)` draws `u` uniform in [0, 1) as f64 and takes `−b + 2b·u` (rounded to f32);
/// `N(0, 1)` uses the Box–Muller transform on two such draws (f64), one value per pair.
pub fn init(job: &Job, seed: u64) -> StateValues {
    let mut rng = stream(seed, INIT_STREAM);
    let mut tensors = Vec::new();
    for t in job.state() {
        let n: usize = t.shape.iter().product::<usize>().max(1);
        let v: Vec<f32> = match t.init {
            Init::Uniform(b) => (0..n).map(|_| (-b + 2.0 * b * rng.random::<f64>()) as f32).collect(),
            Init::Normal { padding_idx } => {
                // rand_distr's ziggurat: several times faster than Box–Muller, which
                // showed in the time to first step of jobs with large embeddings.
                let mut v: Vec<f32> = (0..n).map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal) as f32).collect();
                if let (Some(p), Some(&dim)) = (padding_idx, t.shape.get(1)) {
                    v[p * dim..(p + 1) * dim].fill(0.0);
                }
                v
            }
            Init::Const(c) => vec![c as f32; n],
            Init::Pretrained => match &job.layers[t.layer].kind {
                LayerKind::Embedding { pretrained: Some(rows), .. } => rows.clone(),
                _ => vec![0.0; n],
            },
        };
        tensors.push(v);
    }
    StateValues { tensors, batches_tracked: 0 }
}

/// Writes the state as safetensors with PyTorch's state_dict names, atomically (a temporary
/// file in the same directory, then a rename), so an interrupted write leaves the previous
/// checkpoint intact.
pub fn save(job: &Job, values: &StateValues, path: &Path) -> Result<(), Diagnostic> {
    let state = job.state();
    let nbt = values.batches_tracked.to_le_bytes();
    let mut bytes: Vec<(String, Vec<u8>, StDtype, Vec<usize>)> = Vec::new();
    for (t, v) in state.iter().zip(&values.tensors) {
        if t.role == TensorRole::NumBatchesTracked {
            bytes.push((t.name.clone(), nbt.to_vec(), StDtype::I64, vec![]));
        } else {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            bytes.push((t.name.clone(), b, StDtype::F32, t.shape.clone()));
        }
    }
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, b, dtype, shape)| {
            let view = TensorView::new(*dtype, shape.clone(), b).map_err(|e| Diagnostic::error(format!("cannot encode `{name}`: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_, Diagnostic>>()?;
    let data = safetensors::serialize(views, None).map_err(|e| Diagnostic::error(format!("cannot encode the checkpoint: {e}")))?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let fail = |e: std::io::Error| Diagnostic::error(format!("cannot write `{}`: {e}", path.display()));
    std::fs::write(&tmp, data).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Reads a safetensors file for `--init` / `--weights`: every tensor of the job's state must
/// be there with its shape and dtype, and nothing else; otherwise one diagnostic lists every
/// difference.
pub fn load(job: &Job, path: &Path) -> Result<StateValues, Diagnostic> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Diagnostic::error(format!("cannot read `{shown}`: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Diagnostic::error(format!("`{shown}` is not a safetensors file: {e}")))?;
    let state = job.state();
    let mut problems = Vec::new();
    let mut tensors = Vec::new();
    let mut batches_tracked = 0i64;
    let present: HashMap<String, TensorView> = st.tensors().into_iter().collect();
    for t in &state {
        let Some(view) = present.get(&t.name) else {
            problems.push(format!("missing `{}` {:?}", t.name, t.shape));
            tensors.push(Vec::new());
            continue;
        };
        let (want_dtype, want_shape) = expected(t);
        if view.dtype() != want_dtype || view.shape() != want_shape.as_slice() {
            problems.push(format!(
                "`{}` is {:?} {:?}, expected {:?} {:?}",
                t.name,
                view.dtype(),
                view.shape(),
                want_dtype,
                want_shape
            ));
            tensors.push(Vec::new());
            continue;
        }
        let data = view.data();
        if t.role == TensorRole::NumBatchesTracked {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[..8]);
            batches_tracked = i64::from_le_bytes(b);
            tensors.push(vec![0.0]);
        } else {
            let v: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                problems.push(format!("`{}` holds a non-finite value at element {i}", t.name));
            }
            tensors.push(v);
        }
    }
    let mut extra: Vec<&String> = present.keys().filter(|k| !state.iter().any(|t| &t.name == *k)).collect();
    extra.sort();
    for k in extra {
        problems.push(format!("unexpected `{k}` (not in this job's state_dict)"));
    }
    if problems.is_empty() {
        return Ok(StateValues { tensors, batches_tracked });
    }
    let mut d = Diagnostic::error(format!("`{shown}` does not match this job's state_dict ({} difference{})", problems.len(), if problems.len() == 1 { "" } else { "s" }));
    for p in problems {
        d = d.with_note(p);
    }
    Err(d)
}

fn expected(t: &StateTensor) -> (StDtype, Vec<usize>) {
    if t.role == TensorRole::NumBatchesTracked { (StDtype::I64, vec![]) } else { (StDtype::F32, t.shape.clone()) }
}
