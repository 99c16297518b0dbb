//! Memory planning: every temporary of a kernel program gets a byte offset in one arena,
//! sized for the largest batch and sequence lengths the data can produce. Two temporaries
//! share space when their live ranges (first to last kernel that touches them) do not
//! overlap; a temporary touched inside a time loop lives for the whole loop, since the loop
//! body runs many times.

use super::kernel::*;

/// Arena offsets are aligned to a cache line, which also satisfies every vector access.
const ALIGN: usize = 64;

/// A temporary's element type and size in elements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temp {
    pub elem: Elem,
    pub len: Size,
}

/// Rewrites every `Region::Temp(k)` into `Region::Arena` at a planned offset and returns
/// the arena size in bytes. `max_b` and `max_t` bound the batch size and padded lengths.
pub fn plan(kernels: &mut [Kernel], temps: &[Temp], max_b: i64, max_t: &[i64]) -> usize {
    // Live range of each temporary in top-level kernel positions.
    let mut range: Vec<Option<(usize, usize)>> = vec![None; temps.len()];
    for (pos, k) in kernels.iter().enumerate() {
        visit_bufs(k, &mut |buf| {
            if let Region::Temp(t) = buf.region {
                let r = range[t].get_or_insert((pos, pos));
                r.0 = r.0.min(pos);
                r.1 = r.1.max(pos);
            }
        });
    }
    let bytes = |t: &Temp| -> usize {
        let elem = match t.elem {
            Elem::F32 | Elem::I32 => 4,
            Elem::I64 => 8,
        };
        (t.len.max(max_b, max_t).max(0) as usize * elem).div_ceil(ALIGN) * ALIGN
    };
    // Greedy first fit, largest first: a classic interval-packing heuristic.
    let mut order: Vec<usize> = (0..temps.len()).filter(|&t| range[t].is_some()).collect();
    order.sort_by_key(|&t| std::cmp::Reverse(bytes(&temps[t])));
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new(); // (start, end, offset, size)
    let mut offset_of = vec![0usize; temps.len()];
    let mut total = 0usize;
    for t in order {
        let (s, e) = range[t].expect("live");
        let size = bytes(&temps[t]).max(ALIGN);
        let mut busy: Vec<(usize, usize)> =
            placed.iter().filter(|p| p.0 <= e && s <= p.1).map(|p| (p.2, p.2 + p.3)).collect();
        busy.sort();
        let mut at = 0usize;
        for (lo, hi) in busy {
            if at + size <= lo {
                break;
            }
            at = at.max(hi);
        }
        offset_of[t] = at;
        total = total.max(at + size);
        placed.push((s, e, at, size));
    }
    for k in kernels.iter_mut() {
        rewrite_bufs(k, &mut |buf| {
            if let Region::Temp(t) = buf.region {
                *buf = Buf { region: Region::Arena, offset: offset_of[t] + buf.offset, elem: buf.elem };
            }
        });
    }
    total
}

fn visit_bufs(k: &Kernel, f: &mut dyn FnMut(&Buf)) {
    let mut k = k.clone();
    rewrite_bufs(&mut k, &mut |b| f(b));
}

/// Applies `f` to every buffer a kernel names.
pub fn rewrite_bufs(k: &mut Kernel, f: &mut dyn FnMut(&mut Buf)) {
    match k {
        Kernel::Gemm { a, b, c, .. } => {
            f(&mut a.buf);
            f(&mut b.buf);
            f(&mut c.buf);
        }
        Kernel::Map { inputs, outputs, .. } => {
            inputs.iter_mut().for_each(|a| f(&mut a.buf));
            outputs.iter_mut().for_each(|(a, _)| f(&mut a.buf));
        }
        Kernel::Reduce { inputs, out, .. } => {
            inputs.iter_mut().for_each(|a| f(&mut a.buf));
            f(&mut out.buf);
        }
        Kernel::Gather { ids, table, dst, .. } => {
            f(ids);
            f(table);
            f(dst);
        }
        Kernel::ScatterAdd { ids, src, table, .. } => {
            f(ids);
            f(src);
            f(table);
        }
        Kernel::Zero { buf, .. } => f(buf),
        Kernel::Pick { x, ids, out, .. } => {
            f(x);
            f(ids);
            f(out);
        }
        Kernel::PutAdd { g, ids, dx, .. } => {
            f(g);
            f(ids);
            f(dx);
        }
        Kernel::DropoutMask { out, .. } => f(out),
        Kernel::CopyRows { src, dst, .. } => {
            f(src);
            f(dst);
        }
        Kernel::LastStep { x, lengths, out, .. } => {
            f(x);
            f(lengths);
            f(out);
        }
        Kernel::Loop { body, rows, .. } => {
            if let Some(r) = rows {
                f(r);
            }
            body.iter_mut().for_each(|k| rewrite_bufs(k, f));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(k: usize) -> Buf {
        Buf { region: Region::Temp(k), offset: 0, elem: Elem::F32 }
    }

    fn copy(from: Buf, to: Buf, n: i64) -> Kernel {
        Kernel::Map {
            shape: vec![Size::batch(n)],
            inputs: vec![Access::new(from, vec![Size::fixed(1)])],
            outputs: vec![(Access::new(to, vec![Size::fixed(1)]), Expr::In(0))],
        }
    }

    fn offset(k: &Kernel, input: bool) -> usize {
        match k {
            Kernel::Map { inputs, outputs, .. } => if input { inputs[0].buf.offset } else { outputs[0].0.buf.offset },
            _ => unreachable!(),
        }
    }

    #[test]
    fn disjoint_live_ranges_share_space_and_overlapping_ones_do_not() {
        // t0 → t1 → t2 → t3: t0 dies when t1 is made, so t2 can reuse t0's slot.
        let temps = vec![Temp { elem: Elem::F32, len: Size::batch(16) }; 4];
        let mut ks = vec![copy(temp(0), temp(1), 16), copy(temp(1), temp(2), 16), copy(temp(2), temp(3), 16)];
        let bytes = plan(&mut ks, &temps, 8, &[]);
        let (o0, o1) = (offset(&ks[0], true), offset(&ks[0], false));
        let (o2, o3) = (offset(&ks[1], false), offset(&ks[2], false));
        assert_ne!(o0, o1);
        assert_ne!(o1, o2);
        assert_ne!(o2, o3);
        // 16·8 floats = 512 bytes each; three slots suffice instead of four.
        assert!(bytes <= 3 * 512, "{bytes}");
        assert!(ks.iter().all(|k| matches!(k, Kernel::Map { inputs, .. } if inputs[0].buf.region == Region::Arena)));
    }

    #[test]
    fn offsets_are_cache_line_aligned() {
        let temps = vec![Temp { elem: Elem::F32, len: Size::fixed(3) }, Temp { elem: Elem::F32, len: Size::fixed(5) }];
        let mut ks = vec![copy(temp(0), temp(1), 1)];
        plan(&mut ks, &temps, 1, &[]);
        assert_eq!(offset(&ks[0], true) % ALIGN, 0);
        assert_eq!(offset(&ks[0], false) % ALIGN, 0);
    }
}
