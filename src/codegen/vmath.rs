//! exp, log, tanh and erf as inline Cranelift code, for scalars and f32x4 lanes alike.
//!
//! Cranelift has no transcendental instructions; a host call per element would make every
//! loop that uses one scalar and call-bound. These are the Cephes single-precision
//! algorithms (range reduction + minimax polynomial), accurate to about 2 ulp over the
//! ranges that matter here, and emitted identically for the vector body and the scalar tail
//! so a result never depends on where an element fell.

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, condcodes::FloatCC, types};
use cranelift_frontend::FunctionBuilder;

fn konst(b: &mut FunctionBuilder, lane: Type, v: f32) -> Value {
    let c = b.ins().f32const(v);
    if lane == types::F32 { c } else { b.ins().splat(lane, c) }
}

fn int_ty(lane: Type) -> Type {
    if lane == types::F32 { types::I32 } else { types::I32X4 }
}

fn bits(b: &mut FunctionBuilder, lane: Type, x: Value) -> Value {
    b.ins().bitcast(int_ty(lane), MemFlagsData::new(), x)
}

fn from_bits(b: &mut FunctionBuilder, lane: Type, x: Value) -> Value {
    b.ins().bitcast(lane, MemFlagsData::new(), x)
}

fn iconst(b: &mut FunctionBuilder, lane: Type, v: i64) -> Value {
    let c = b.ins().iconst(types::I32, v);
    if lane == types::F32 { c } else { b.ins().splat(types::I32X4, c) }
}

/// `if p (cc) q { t } else { f }`, lane-wise, for scalars and f32x4 alike. Used instead of
/// `fmax`/`fmin`, whose NaN and ±0 handling costs ten instructions: here a NaN propagates
/// only when it is `p`.
pub fn select(b: &mut FunctionBuilder, lane: Type, cc: FloatCC, p: Value, q: Value, t: Value, f: Value) -> Value {
    let c = b.ins().fcmp(cc, p, q);
    if lane == types::F32 {
        b.ins().select(c, t, f)
    } else {
        let mask = b.ins().bitcast(types::F32X4, MemFlagsData::new(), c);
        b.ins().bitselect(mask, t, f)
    }
}

fn clamp(b: &mut FunctionBuilder, lane: Type, x: Value, lo: f32, hi: f32) -> Value {
    let lo = konst(b, lane, lo);
    let hi = konst(b, lane, hi);
    let x = select(b, lane, FloatCC::LessThan, x, lo, lo, x);
    select(b, lane, FloatCC::GreaterThan, x, hi, hi, x)
}

/// Horner evaluation of `c[0]·x^(n-1) + … + c[n-1]`.
fn poly(b: &mut FunctionBuilder, lane: Type, x: Value, coeffs: &[f32]) -> Value {
    let mut acc = konst(b, lane, coeffs[0]);
    for c in &coeffs[1..] {
        let k = konst(b, lane, *c);
        acc = b.ins().fmul(acc, x);
        acc = b.ins().fadd(acc, k);
    }
    acc
}

/// e^x (Cephes `expf`): x = n·ln2 + r, |r| ≤ ln2/2, e^r by a degree-6 polynomial, then the
/// exponent bits add n. Inputs beyond ±88.7 saturate to 0 / +inf as expf does; NaN stays NaN.
pub fn exp(b: &mut FunctionBuilder, lane: Type, x: Value) -> Value {
    let nan_in = x;
    let big = konst(b, lane, f32::INFINITY);
    let hi_limit = konst(b, lane, 88.722_84);
    let lo_limit = konst(b, lane, -103.972_08);
    let xc = clamp(b, lane, x, -87.336_54, 88.376_26);
    let log2e = konst(b, lane, std::f32::consts::LOG2_E);
    let n = b.ins().fmul(xc, log2e);
    let n = b.ins().nearest(n);
    let c1 = konst(b, lane, 0.693_359_4);
    let c2 = konst(b, lane, -2.121_944_4e-4);
    let t = b.ins().fmul(n, c1);
    let r = b.ins().fsub(xc, t);
    let t = b.ins().fmul(n, c2);
    let r = b.ins().fsub(r, t);
    let r2 = b.ins().fmul(r, r);
    let p = poly(b, lane, r, &[1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.0e-1]);
    let p = b.ins().fmul(p, r2);
    let p = b.ins().fadd(p, r);
    let one = konst(b, lane, 1.0);
    let p = b.ins().fadd(p, one);
    // 2^n by building the exponent: (n + 127) << 23.
    let ni = b.ins().fcvt_to_sint_sat(int_ty(lane), n);
    let bias = iconst(b, lane, 127);
    let e = b.ins().iadd(ni, bias);
    let e = b.ins().ishl_imm_s(e, 23);
    let scale = from_bits(b, lane, e);
    let y = b.ins().fmul(p, scale);
    // Saturation beyond the clamped range, and NaN passthrough.
    let zero = konst(b, lane, 0.0);
    let y = select(b, lane, FloatCC::GreaterThan, x, hi_limit, big, y);
    let y = select(b, lane, FloatCC::LessThan, x, lo_limit, zero, y);
    select(b, lane, FloatCC::Unordered, nan_in, nan_in, nan_in, y)
}

/// ln x (Cephes `logf`): x = m·2^e with m in [√½, √2), ln m by a degree-8 polynomial in
/// m − 1. ln 0 = −inf, ln of a negative number or NaN = NaN, ln inf = inf.
pub fn log(b: &mut FunctionBuilder, lane: Type, x: Value) -> Value {
    let xb = bits(b, lane, x);
    // Exponent and mantissa (normal numbers; subnormals are rare enough in training to
    // accept the reduced accuracy of treating them as tiny normals).
    let e = b.ins().ushr_imm_s(xb, 23);
    let ff = iconst(b, lane, 0xff);
    let e = b.ins().band(e, ff);
    let bias = iconst(b, lane, 126);
    let e = b.ins().isub(e, bias);
    let mant_mask = iconst(b, lane, 0x807f_ffff_u32 as i32 as i64);
    let m = b.ins().band(xb, mant_mask);
    let half_bits = iconst(b, lane, 0x3f00_0000);
    let m = b.ins().bor(m, half_bits);
    let m = from_bits(b, lane, m); // m in [0.5, 1)
    let ef = b.ins().fcvt_from_sint(lane, e);
    // If m < √½: m = 2m − 1, e −= 1; else m = m − 1.
    let sqrthf = konst(b, lane, std::f32::consts::FRAC_1_SQRT_2);
    let one = konst(b, lane, 1.0);
    let ef_minus = b.ins().fsub(ef, one);
    let ef = select(b, lane, FloatCC::LessThan, m, sqrthf, ef_minus, ef);
    let m2 = b.ins().fadd(m, m);
    let mm = select(b, lane, FloatCC::LessThan, m, sqrthf, m2, m);
    let z = b.ins().fsub(mm, one);
    let z2 = b.ins().fmul(z, z);
    let p = poly(
        b,
        lane,
        z,
        &[7.037_683_6e-2, -1.151_461e-1, 1.167_699_9e-1, -1.242_014_1e-1, 1.424_932_3e-1, -1.666_805_8e-1, 2.000_071_5e-1, -2.499_999_4e-1, 3.333_333e-1],
    );
    let p = b.ins().fmul(p, z);
    let p = b.ins().fmul(p, z2);
    let q1 = konst(b, lane, -2.121_944_4e-4);
    let t = b.ins().fmul(ef, q1);
    let p = b.ins().fadd(p, t);
    let half = konst(b, lane, 0.5);
    let t = b.ins().fmul(z2, half);
    let p = b.ins().fsub(p, t);
    let y = b.ins().fadd(z, p);
    let q2 = konst(b, lane, 0.693_359_4);
    let t = b.ins().fmul(ef, q2);
    let y = b.ins().fadd(y, t);
    // Special values.
    let zero = konst(b, lane, 0.0);
    let ninf = konst(b, lane, f32::NEG_INFINITY);
    let inf = konst(b, lane, f32::INFINITY);
    let nan = konst(b, lane, f32::NAN);
    let y = select(b, lane, FloatCC::Equal, x, zero, ninf, y);
    let y = select(b, lane, FloatCC::LessThan, x, zero, nan, y);
    let y = select(b, lane, FloatCC::Equal, x, inf, inf, y);
    select(b, lane, FloatCC::Unordered, x, x, x, y)
}

/// tanh x (Cephes `tanhf`): an odd polynomial for |x| < 0.625, else 1 − 2/(e^{2|x|} + 1)
/// with the sign restored; saturates to ±1 beyond |x| = 9.
pub fn tanh(b: &mut FunctionBuilder, lane: Type, x: Value) -> Value {
    let ax = b.ins().fabs(x);
    let x2 = b.ins().fmul(x, x);
    let p = poly(b, lane, x2, &[-5.704_988_7e-3, 2.063_908_8e-2, -5.373_971_4e-2, 1.333_144_2e-1, -3.333_328_4e-1]);
    let p = b.ins().fmul(p, x2);
    let p = b.ins().fmul(p, x);
    let small = b.ins().fadd(p, x);
    let axc = clamp(b, lane, ax, 0.0, 9.0);
    let two_ax = b.ins().fadd(axc, axc);
    let e = exp(b, lane, two_ax);
    let one = konst(b, lane, 1.0);
    let two = konst(b, lane, 2.0);
    let d = b.ins().fadd(e, one);
    let q = b.ins().fdiv(two, d);
    let large = b.ins().fsub(one, q);
    // Restore the sign: copy x's sign bit onto |tanh|.
    let neg = b.ins().fneg(large);
    let zero = konst(b, lane, 0.0);
    let large = select(b, lane, FloatCC::LessThan, x, zero, neg, large);
    let limit = konst(b, lane, 0.625);
    let y = select(b, lane, FloatCC::LessThan, ax, limit, small, large);
    select(b, lane, FloatCC::Unordered, x, x, x, y)
}

/// erf x: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7 in exact arithmetic,
/// below 5e-7 in f32), odd-symmetric. Used by exact `gelu`, where it moves an output by at
/// most 2.5e-7·|x|.
pub fn erf(b: &mut FunctionBuilder, lane: Type, x: Value) -> Value {
    let ax = b.ins().fabs(x);
    let one = konst(b, lane, 1.0);
    let p = konst(b, lane, 0.327_591_1);
    let t = b.ins().fmul(p, ax);
    let t = b.ins().fadd(one, t);
    let t = b.ins().fdiv(one, t);
    let q = poly(b, lane, t, &[1.061_405_4, -1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6]);
    let q = b.ins().fmul(q, t);
    let x2 = b.ins().fmul(ax, ax);
    let nx2 = b.ins().fneg(x2);
    let e = exp(b, lane, nx2);
    let q = b.ins().fmul(q, e);
    let y = b.ins().fsub(one, q);
    let neg = b.ins().fneg(y);
    let zero = konst(b, lane, 0.0);
    let y = select(b, lane, FloatCC::LessThan, x, zero, neg, y);
    select(b, lane, FloatCC::Unordered, x, x, x, y)
}
