use super::*;
use crate::ops::cpu::lanes::Plain;

type P = Plain<f64>;

/// Plain f64 lanes that ask for the tile shapes of a lane type keeping `N`
/// sums: 16 (AVX-512's shapes), 6 (AVX2's) and 3 (the portable path's), so
/// that each shape is checked on any CPU.
#[derive(Clone, Copy)]
struct Shaped<const N: usize>(P);

impl<const N: usize> Lanes<f64> for Shaped<N> {
    const ACC: usize = N;
    fn zero() -> Self {
        Shaped(P::zero())
    }
    fn splat(x: f64) -> Self {
        Shaped(P::splat(x))
    }
    fn load(s: &[f64]) -> Self {
        Shaped(P::load(s))
    }
    fn store(self, s: &mut [f64]) {
        self.0.store(s)
    }
    fn mul_add(self, x: Self, y: Self) -> Self {
        Shaped(self.0.mul_add(x.0, y.0))
    }
    fn mul(self, x: Self) -> Self {
        Shaped(self.0.mul(x.0))
    }
    fn add(self, x: Self) -> Self {
        Shaped(self.0.add(x.0))
    }
    fn max(self, x: Self) -> Self {
        Shaped(self.0.max(x.0))
    }
    fn sum(self) -> f64 {
        self.0.sum()
    }
    fn hmax(self) -> f64 {
        self.0.hmax()
    }
    fn exp(self) -> Self {
        Shaped(self.0.exp())
    }
}

fn vals(n: usize, seed: usize) -> Vec<f64> {
    (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f64 / 1001.0) - 1.0).collect()
}

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn scores_equal_the_plain_product() {
    scores_case::<Shaped<16>>();
    scores_case::<Shaped<6>>();
    scores_case::<Shaped<3>>();
}

fn scores_case<V: Lanes<f64>>() {
    // Row counts around the 8-, 6- and 3-row tiles and their leftovers of
    // 4, 2 and 1; depths 1, 16 and 24; 2 key blocks.
    for (rows, depth) in [(1, 16), (8, 24), (13, 1), (17, 16), (7, 16), (11, 24), (6, 1)] {
        let (lda, ldb) = (depth + 3, 2 * KEY_BLOCK);
        let (a, bt) = (vals(rows * lda, 1), vals(depth * ldb, 2));
        let mut want = vec![0.0; rows * ldb];
        for i in 0..rows {
            for j in 0..ldb {
                want[i * ldb + j] = (0..depth).map(|c| a[i * lda + c] * bt[c * ldb + j]).sum();
            }
        }
        // Output rows one vector longer than the keys (`key_stride`).
        let lds = key_stride(ldb);
        let mut got = vec![f64::NAN; rows * lds];
        scores::<f64, V>(&mut got, lds, &a, lda, rows, depth, &bt, ldb, ldb);
        let got: Vec<f64> = got.chunks(lds).flat_map(|r| r[..ldb].to_vec()).collect();
        close(&got, &want, &format!("scores {rows}x{depth}, {} sums", V::ACC));
    }
}

#[test]
fn weighted_and_transposed_products_equal_the_plain_ones() {
    products_case::<Shaped<16>>();
    products_case::<Shaped<6>>();
    products_case::<Shaped<3>>();
}

fn products_case<V: Lanes<f64>>() {
    // Widths of 1, 2, 3 (a 2-chunk group, then a 1-chunk one), 4 and 6 chunks;
    // row and key counts around the tiles.
    for (rows, n, chunks) in [(1, 1, 1), (9, 7, 2), (8, 77, 3), (5, 33, 4), (11, 10, 6), (13, 17, 1)] {
        let (w, ldp) = (chunks * LANES, n + 5);
        let (p, y) = (vals(rows * ldp, 3), vals(n.max(rows) * w, 4));
        let mut want = vec![0.0; rows * w];
        for i in 0..rows {
            for c in 0..w {
                want[i * w + c] = (0..n).map(|j| p[i * ldp + j] * y[j * w + c]).sum();
            }
        }
        let mut got = vec![f64::NAN; rows * w];
        weighted_rows::<f64, V>(&mut got, &p, ldp, rows, n, &y, w);
        close(&got, &want, &format!("weighted {rows}x{n}x{w}, {} sums", V::ACC));

        let start = vals(n * w, 5);
        let mut want = start.clone();
        for j in 0..n {
            for c in 0..w {
                want[j * w + c] += (0..rows).map(|i| p[i * ldp + j] * y[i * w + c]).sum::<f64>();
            }
        }
        let mut got = start.clone();
        add_transposed::<f64, V>(&mut got, &p, ldp, rows, n, &y, w);
        close(&got, &want, &format!("transposed {rows}x{n}x{w}, {} sums", V::ACC));
    }
}

#[test]
fn packing_round_trips() {
    let (rows, ld, off, width) = (5, 11, 3, 6);
    let src = vals(rows * ld, 6);
    let packed = pack_rows(&src, ld, off, rows, width, LANES);
    assert_eq!(packed.len(), rows * LANES);
    assert!(packed.chunks(LANES).all(|r| r[width..].iter().all(|&v| v == 0.0)));
    let t = pack_transposed(&src, ld, off, rows, width, 8);
    for j in 0..8 {
        for c in 0..width {
            assert_eq!(t[c * 8 + j], if j < rows { src[j * ld + off + c] } else { 0.0 });
        }
    }
    let mut back = vec![0.0; rows * ld];
    unpack_rows(&mut back, ld, off, &packed, width, LANES, false);
    unpack_rows(&mut back, ld, off, &packed, width, LANES, true);
    for r in 0..rows {
        for c in 0..ld {
            let want = if (off..off + width).contains(&c) { 2.0 * src[r * ld + c] } else { 0.0 };
            assert_eq!(back[r * ld + c], want);
        }
    }
    assert_eq!(round_up(77, KEY_BLOCK), 96);
    assert_eq!(round_up(64, KEY_BLOCK), 64);
}

/// Everything of this module through `V` on f32 inputs: the three
/// products, then exponentials of 77 of 96 scores (with their sum and the
/// row max appended), then the softmax gradient of that row.
#[inline(always)]
fn all_f32<V: Lanes<f32>>(a: &[f32], p: &[f32], y: &[f32]) -> [Vec<f32>; 5] {
    let (rows, depth, ldb, w) = (11, 24, 2 * KEY_BLOCK, 3 * LANES);
    let mut s = vec![0f32; rows * ldb];
    scores::<f32, V>(&mut s, ldb, a, depth, rows, depth, p, ldb, ldb);
    let mut o = vec![0f32; rows * w];
    weighted_rows::<f32, V>(&mut o, p, ldb, rows, 50, y, w);
    let mut t = y[..50 * w].to_vec();
    add_transposed::<f32, V>(&mut t, p, ldb, rows, 50, y, w);
    let mut e: Vec<f32> = y[..96].iter().map(|v| v * 30.0).collect();
    let max = row_max::<f32, V>(&e, 77);
    let sum = exp_row::<f32, V>(&mut e, 77, 0.5, max * 0.5);
    let mut ds = y[96..192].to_vec();
    softmax_grad_row::<f32, V>(&mut ds, &e, 0.25);
    e.extend([sum, max]);
    [s, o, t, e, ds]
}

/// [`all_f32`] as a kernel of every SIMD path.
struct All<'a>(&'a [f32], &'a [f32], &'a [f32]);

impl crate::ops::cpu::simd::Kernel for All<'_> {
    type Output = [Vec<f32>; 5];
    #[inline(always)]
    fn run<I: crate::ops::cpu::simd::Isa>(self) -> [Vec<f32>; 5] {
        all_f32::<I::F32>(self.0, self.1, self.2)
    }
}

#[test]
fn vector_builds_agree_with_plain_lanes() {
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let (a, p, y) = (f(vals(11 * 24, 7)), f(vals(24 * 2 * KEY_BLOCK, 8)), f(vals(50 * 3 * LANES, 9)));
    let want = all_f32::<Plain<f32>>(&a, &p, &y);
    let agree = |got: [Vec<f32>; 5], what: &str| {
        for (g, w) in got.iter().zip(&want) {
            for (x, y) in g.iter().zip(w) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{what}: {x} vs {y}");
            }
        }
    };
    use crate::ops::cpu::simd::{Path, Simd};
    let mut vector = Vec::new();
    for path in Path::supported() {
        let got = Simd::new(path).unwrap().run(All(&a, &p, &y));
        agree(got.clone(), path.name());
        vector.push((path, got));
    }
    // The AVX2 and AVX-512 builds do the same operations per lane (FMA,
    // the same exp and the same pairing in the lane sums): bit for bit.
    let avx: Vec<_> = vector.iter().filter(|(path, _)| *path != Path::Portable).collect();
    if let [(_, x), (_, y)] = avx.as_slice() {
        assert_eq!(x, y, "avx512 and avx2 builds differ");
    }
    // The plain build against the formulas: exp of the shifted scores with
    // zeros past 77 keys, their sum, the max, then p (ds - p.ds) scale.
    let raw: Vec<f64> = y[..96].iter().map(|&v| (v * 30.0) as f64).collect();
    let max = raw[..77].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = (0..96).map(|j| if j < 77 { ((raw[j] - max) * 0.5).exp() } else { 0.0 }).collect();
    let sum: f64 = e.iter().sum();
    assert_eq!(want[3][97] as f64, max);
    assert!((want[3][96] as f64 - sum).abs() < 1e-5 * sum);
    for (g, w) in want[3].iter().zip(&e) {
        assert!((*g as f64 - w).abs() < 3e-7 * (1.0 + w), "exp {g} vs {w}");
    }
    let p: Vec<f64> = want[3][..96].iter().map(|&v| v as f64).collect();
    let ds0: Vec<f64> = y[96..192].iter().map(|&v| v as f64).collect();
    let dot: f64 = p.iter().zip(&ds0).map(|(a, b)| a * b).sum();
    for j in 0..96 {
        let w = p[j] * (ds0[j] - dot) * 0.25;
        assert!((want[4][j] as f64 - w).abs() < 1e-5, "softmax grad {j}: {} vs {w}", want[4][j]);
    }
}
