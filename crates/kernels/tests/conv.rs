//! conv2d / conv_transpose2d against Candle's own ops (in f64) and against finite differences,
//! for every layer of Table 9, several batch sizes, strided inputs, and pruned gradients.
mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{assert_close, conv, convt, uniform, Kind, Layer, TABLE9};

/// Relative error bound against Candle's op computed in f64 (the task's bound).
const TOL: f64 = 1e-5;

/// Forward and all three gradients of our f32 op against Candle's op in f64 for
/// `loss = Σ y ⊙ r` with random `r`. With `strided`, `x` and `w` enter as transposed views.
fn check_layer(l: &Layer, n: usize, seed: u64, bias: bool, strided: bool) -> Result<()> {
    let ws = l.weight_shape();
    let (x0, w0) = if strided {
        // Store the transposes; the ops see (non-contiguous) views in the right shape.
        (
            uniform(&[n, l.c_in, l.side, l.side], seed)?
                .transpose(2, 3)?
                .contiguous()?,
            uniform(&[ws[0], ws[1], ws[3], ws[2]], seed + 1)?
                .transpose(2, 3)?
                .contiguous()?,
        )
    } else {
        (
            uniform(&[n, l.c_in, l.side, l.side], seed)?,
            uniform(&ws, seed + 1)?,
        )
    };
    let b0 = uniform(&[l.c_out], seed + 2)?;
    let out = l.out_side();
    let r = uniform(&[n, l.c_out, out, out], seed + 3)?;

    let run = |dtype: DType, ours: bool| -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
        let x = Var::from_tensor(&x0.to_dtype(dtype)?)?;
        let w = Var::from_tensor(&w0.to_dtype(dtype)?)?;
        let b = Var::from_tensor(&b0.to_dtype(dtype)?)?;
        let (xv, wv) = if strided {
            (
                x.as_tensor().transpose(2, 3)?,
                w.as_tensor().transpose(2, 3)?,
            )
        } else {
            (x.as_tensor().clone(), w.as_tensor().clone())
        };
        // (A transpose of 1x1 planes is still contiguous.)
        if strided {
            assert!(l.side == 1 || !xv.is_contiguous());
            assert!(l.k == 1 || !wv.is_contiguous());
        }
        let bv = bias.then(|| b.as_tensor().clone());
        let y = if ours {
            l.ours(&xv, &wv, bv.as_ref())?
        } else {
            l.candle(&xv, &wv, bv.as_ref())?
        };
        let grads = (&y * r.to_dtype(dtype)?)?.sum_all()?.backward()?;
        let gx = grads.get(x.as_tensor()).expect("input gradient").clone();
        let gw = grads.get(w.as_tensor()).expect("weight gradient").clone();
        let gb = grads.get(b.as_tensor()).cloned();
        Ok((y, gx, gw, gb))
    };
    let (y, gx, gw, gb) = run(DType::F32, true)?;
    let (y_ref, gx_ref, gw_ref, gb_ref) = run(DType::F64, false)?;
    let what = format!("{} n={n} bias={bias} strided={strided}", l.name);
    assert_close(&format!("{what}: forward"), &y, &y_ref, TOL);
    assert_close(&format!("{what}: d/dx"), &gx, &gx_ref, TOL);
    assert_close(&format!("{what}: d/dw"), &gw, &gw_ref, TOL);
    match (gb, gb_ref) {
        (Some(gb), Some(gb_ref)) => assert_close(&format!("{what}: d/db"), &gb, &gb_ref, TOL),
        (None, None) => assert!(!bias),
        _ => panic!("{what}: bias gradient present in one run only"),
    }
    Ok(())
}

#[test]
fn every_table9_layer_matches_candle() -> Result<()> {
    for (i, l) in TABLE9.iter().enumerate() {
        check_layer(l, 2, 100 + i as u64, true, false)?;
    }
    Ok(())
}

#[test]
fn batch_sizes_bias_and_strided_inputs_match_candle() -> Result<()> {
    // One layer of each geometry family (stride 2 / pad 2 with output_padding in backward,
    // stride 2 / pad 0 and pad 1 transposed, stride 1, 1x1 latents), batch 1 (parallel GEMM),
    // odd batches (uneven chunks), without bias, and as strided views.
    let pick = [
        "mnist enc1",
        "mnist enc4",
        "mnist dec1",
        "mnist dec2",
        "svhn dec2",
        "svhn dec5",
    ];
    for (i, l) in TABLE9.iter().filter(|l| pick.contains(&l.name)).enumerate() {
        let seed = 1000 + 10 * i as u64;
        check_layer(l, 1, seed, true, false)?;
        check_layer(l, 5, seed + 1, false, false)?;
        check_layer(l, 3, seed + 2, true, true)?;
    }
    Ok(())
}

#[test]
fn gemm_only_geometries_match_candle() -> Result<()> {
    // The geometries that skip im2col / col2im (a kernel covering the whole unpadded input; a
    // 1x1 kernel at stride 1 without padding) beyond Table 9's instances, and near misses that
    // must take the general path: a 1x1 input whose kernel does not cover the output
    // (output_padding), a 1x1 kernel at stride 2 or with padding.
    let layers = [
        conv("full cover conv, stride 3", 3, 5, 5, 3, 0, 5),
        conv("full cover conv, 1 channel", 1, 7, 3, 1, 0, 3),
        convt("full cover convT, stride 3", 6, 2, 5, 3, 0, 0, 1),
        convt("1x1 input with output_padding", 4, 3, 4, 2, 0, 1, 1),
        conv("pointwise conv", 6, 4, 1, 1, 0, 5),
        convt("pointwise convT, many out", 2, 9, 1, 1, 0, 0, 6),
        conv("1x1 kernel, stride 2", 3, 4, 1, 2, 0, 7),
        conv("1x1 kernel, padding 1", 3, 4, 1, 1, 1, 4),
        conv("k3 padding 1 on 3x3 (not full cover)", 2, 3, 3, 1, 1, 3),
    ];
    for (i, l) in layers.iter().enumerate() {
        let seed = 5000 + 10 * i as u64;
        check_layer(l, 1, seed, true, false)?;
        check_layer(l, 9, seed + 1, false, false)?;
        check_layer(l, 4, seed + 2, true, true)?;
    }
    Ok(())
}

#[test]
fn many_chunks_match_candle() -> Result<()> {
    // 37 images of mnist dec3 (cols of 48 400 floats per image): several chunks per thread,
    // the last one short.
    let l = TABLE9.iter().find(|l| l.name == "mnist dec3").unwrap();
    check_layer(l, 37, 7, true, false)
}

#[test]
fn rectangular_inputs_and_output_padding_match_candle() -> Result<()> {
    // Non-square images and kernels exercise the separate row and column index ranges.
    let x0 = uniform(&[2, 3, 9, 6], 1)?;
    let w = uniform(&[4, 3, 3, 2], 2)?;
    let y = eabs_kernels::conv2d(&x0, &w, None, 2, 1)?;
    let y_ref = x0
        .to_dtype(DType::F64)?
        .conv2d(&w.to_dtype(DType::F64)?, 1, 2, 1, 1)?;
    assert_close("rect conv2d", &y, &y_ref, TOL);
    let wt = uniform(&[3, 4, 3, 2], 3)?;
    let yt = eabs_kernels::conv_transpose2d(&x0, &wt, None, 3, 1, 2)?;
    let yt_ref =
        x0.to_dtype(DType::F64)?
            .conv_transpose2d(&wt.to_dtype(DType::F64)?, 1, 2, 3, 1)?;
    assert_close("rect conv_transpose2d", &yt, &yt_ref, TOL);
    Ok(())
}

/// Untracked arguments get no gradient (pruned in `bwd`), and Candle's backprop accepts the
/// `None`s: the input gradient is still right.
#[test]
fn untracked_weights_get_no_gradient() -> Result<()> {
    for l in TABLE9
        .iter()
        .filter(|l| ["mnist enc1", "mnist dec2"].contains(&l.name))
    {
        let x = Var::from_tensor(&uniform(&[2, l.c_in, l.side, l.side], 5)?)?;
        let w = uniform(&l.weight_shape(), 6)?;
        let b = uniform(&[l.c_out], 7)?;
        let y = l.ours(x.as_tensor(), &w, Some(&b))?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        assert!(
            grads.get(&w).is_none() && grads.get(&b).is_none(),
            "{}: weight gradient computed",
            l.name
        );
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let x64 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F64)?)?;
        let y64 = l.candle(
            x64.as_tensor(),
            &w.to_dtype(DType::F64)?,
            Some(&b.to_dtype(DType::F64)?),
        )?;
        let g64 = y64.sqr()?.sum_all()?.backward()?;
        assert_close(l.name, gx, g64.get(x64.as_tensor()).unwrap(), TOL);

        // And the other way round: weights tracked, input not.
        let wv = Var::from_tensor(&w)?;
        let y = l.ours(x.as_tensor().detach().as_ref(), wv.as_tensor(), None)?;
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(wv.as_tensor()).is_some());
        assert!(grads.get(x.as_tensor()).is_none());
    }
    Ok(())
}

/// `Σ y ⊙ r` in f64 from our f32 forward pass.
fn loss(l: &Layer, x: &Tensor, w: &Tensor, b: &Tensor, r: &[f32]) -> f64 {
    let y: Vec<f32> = l
        .ours(x, w, Some(b))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central differences of `loss` at a few coordinates of `t` (which is `which` of x, w, b).
fn fd_check(l: &Layer, x: &Tensor, w: &Tensor, b: &Tensor, r: &[f32], which: usize, grad: &Tensor) {
    let t = [x, w, b][which];
    let base: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let g: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
    // The loss is linear in each argument, so a large step has no truncation error and keeps
    // f32 rounding of y (relative 6e-8, summed over outputs) small after division by 2h.
    let h = 0.5f32;
    let step = (base.len() / 7).max(1);
    for idx in (0..base.len()).step_by(step) {
        let eval = |delta: f32| {
            let mut v = base.clone();
            v[idx] += delta;
            let p = Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap();
            let mut args = [x.clone(), w.clone(), b.clone()];
            args[which] = p;
            loss(l, &args[0], &args[1], &args[2], r)
        };
        let fd = (eval(h) - eval(-h)) / (2.0 * h as f64);
        let tol = 1e-4 * (1.0 + fd.abs());
        assert!(
            (fd - g[idx] as f64).abs() < tol,
            "{} arg {which} idx {idx}: finite difference {fd} vs gradient {}",
            l.name,
            g[idx]
        );
    }
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    // Small-channel versions of the three geometries: stride-2 pad-2 conv (output_padding in
    // its input gradient), stride-2 pad-1 and stride-2 pad-0 transposed convs.
    let layers = [
        Layer {
            name: "fd conv s2 p2",
            kind: Kind::Conv,
            c_in: 2,
            c_out: 3,
            k: 5,
            stride: 2,
            pad: 2,
            out_pad: 0,
            side: 8,
        },
        Layer {
            name: "fd convT s2 p1",
            kind: Kind::ConvT,
            c_in: 3,
            c_out: 2,
            k: 4,
            stride: 2,
            pad: 1,
            out_pad: 0,
            side: 3,
        },
        Layer {
            name: "fd convT s2 p0 op1",
            kind: Kind::ConvT,
            c_in: 2,
            c_out: 2,
            k: 5,
            stride: 2,
            pad: 0,
            out_pad: 1,
            side: 3,
        },
    ];
    for (i, l) in layers.iter().enumerate() {
        let seed = 50 + 10 * i as u64;
        let x = uniform(&[2, l.c_in, l.side, l.side], seed)?;
        let w = uniform(&l.weight_shape(), seed + 1)?;
        let b = uniform(&[l.c_out], seed + 2)?;
        let out = l.out_side();
        let r: Vec<f32> = uniform(&[2 * l.c_out * out * out], seed + 3)?.to_vec1()?;
        let (xv, wv, bv) = (
            Var::from_tensor(&x)?,
            Var::from_tensor(&w)?,
            Var::from_tensor(&b)?,
        );
        let y = l.ours(xv.as_tensor(), wv.as_tensor(), Some(bv.as_tensor()))?;
        let rt = Tensor::from_vec(r.clone(), y.shape(), &Device::Cpu)?;
        let grads = (&y * rt)?.sum_all()?.backward()?;
        for (which, v) in [&xv, &wv, &bv].iter().enumerate() {
            fd_check(l, &x, &w, &b, &r, which, grads.get(v.as_tensor()).unwrap());
        }
    }
    Ok(())
}

#[test]
fn other_dtypes_fall_back_to_candle() -> Result<()> {
    let l = TABLE9.iter().find(|l| l.name == "mnist dec2").unwrap();
    let x = uniform(&[2, l.c_in, l.side, l.side], 1)?.to_dtype(DType::F64)?;
    let w = uniform(&l.weight_shape(), 2)?.to_dtype(DType::F64)?;
    let y = l.ours(&x, &w, None)?;
    assert_eq!(y.dtype(), DType::F64);
    assert_close("f64 fallback", &y, &l.candle(&x, &w, None)?, 1e-12);
    Ok(())
}

#[test]
fn empty_batch_gives_empty_output() -> Result<()> {
    let x = Tensor::zeros((0, 3, 8, 8), DType::F32, &Device::Cpu)?;
    let y = eabs_kernels::conv2d(&x, &uniform(&[4, 3, 5, 5], 1)?, None, 2, 2)?;
    assert_eq!(y.dims(), &[0, 4, 4, 4]);
    let yt = eabs_kernels::conv_transpose2d(&x, &uniform(&[3, 4, 4, 4], 1)?, None, 2, 1, 0)?;
    assert_eq!(yt.dims(), &[0, 4, 16, 16]);
    Ok(())
}

#[test]
fn bad_arguments_are_named_in_errors() {
    let x = uniform(&[2, 3, 8, 8], 1).unwrap();
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let e = err(eabs_kernels::conv2d(
        &x,
        &uniform(&[4, 2, 3, 3], 2).unwrap(),
        None,
        1,
        0,
    ));
    assert!(
        e.contains("conv2d: weight") && e.contains("c_in = 3"),
        "{e}"
    );
    let e = err(eabs_kernels::conv2d(
        &x.flatten_all().unwrap(),
        &uniform(&[4, 3, 3, 3], 2).unwrap(),
        None,
        1,
        0,
    ));
    assert!(e.contains("conv2d: input") && e.contains("rank 4"), "{e}");
    let e = err(eabs_kernels::conv2d(
        &x,
        &uniform(&[4, 3, 11, 11], 2).unwrap(),
        None,
        1,
        1,
    ));
    assert!(e.contains("smaller than the kernel"), "{e}");
    let e = err(eabs_kernels::conv2d(
        &x,
        &uniform(&[4, 3, 3, 3], 2).unwrap(),
        Some(&uniform(&[3], 3).unwrap()),
        1,
        0,
    ));
    assert!(e.contains("conv2d: bias") && e.contains("[4]"), "{e}");
    let e = err(eabs_kernels::conv2d(
        &x,
        &uniform(&[4, 3, 3, 3], 2).unwrap(),
        None,
        0,
        0,
    ));
    assert!(e.contains("stride"), "{e}");
    let e = err(eabs_kernels::conv_transpose2d(
        &x,
        &uniform(&[3, 4, 4, 4], 2).unwrap(),
        None,
        2,
        1,
        2,
    ));
    assert!(
        e.contains("output_padding") && e.contains("stride 2"),
        "{e}"
    );
    let e = err(eabs_kernels::conv_transpose2d(
        &x,
        &uniform(&[4, 4, 4, 4], 2).unwrap(),
        None,
        2,
        1,
        0,
    ));
    assert!(e.contains("conv_transpose2d: weight"), "{e}");
    let one = uniform(&[1, 3, 1, 1], 1).unwrap();
    let e = err(eabs_kernels::conv_transpose2d(
        &one,
        &uniform(&[3, 4, 1, 1], 2).unwrap(),
        None,
        1,
        1,
        0,
    ));
    assert!(e.contains("empty output"), "{e}");
}

#[test]
fn explicit_backward_matches_autograd() -> Result<()> {
    for l in TABLE9
        .iter()
        .filter(|l| ["mnist enc1", "svhn dec2"].contains(&l.name))
    {
        let x = Var::from_tensor(&uniform(&[3, l.c_in, l.side, l.side], 1)?)?;
        let w = Var::from_tensor(&uniform(&l.weight_shape(), 2)?)?;
        let b = Var::from_tensor(&uniform(&[l.c_out], 3)?)?;
        let y = l.ours(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))?;
        let gy = uniform(y.dims(), 4)?;
        let auto = (&y * &gy)?.sum_all()?.backward()?;
        let all = eabs_kernels::ConvGrads::ALL;
        let (gx, gw, gb) = match l.kind {
            Kind::Conv => eabs_kernels::conv2d_backward(
                x.as_tensor(),
                w.as_tensor(),
                &gy,
                l.stride,
                l.pad,
                all,
            )?,
            Kind::ConvT => eabs_kernels::conv_transpose2d_backward(
                x.as_tensor(),
                w.as_tensor(),
                &gy,
                l.stride,
                l.pad,
                l.out_pad,
                all,
            )?,
        };
        assert_close("dx", &gx.unwrap(), auto.get(x.as_tensor()).unwrap(), 1e-6);
        assert_close("dw", &gw.unwrap(), auto.get(w.as_tensor()).unwrap(), 1e-6);
        assert_close("db", &gb.unwrap(), auto.get(b.as_tensor()).unwrap(), 1e-6);
        let only = eabs_kernels::ConvGrads::INPUT;
        let (gx, gw, gb) = match l.kind {
            Kind::Conv => eabs_kernels::conv2d_backward(
                x.as_tensor(),
                w.as_tensor(),
                &gy,
                l.stride,
                l.pad,
                only,
            )?,
            Kind::ConvT => eabs_kernels::conv_transpose2d_backward(
                x.as_tensor(),
                w.as_tensor(),
                &gy,
                l.stride,
                l.pad,
                l.out_pad,
                only,
            )?,
        };
        assert!(gx.is_some() && gw.is_none() && gb.is_none());
        let bad = uniform(&[3, l.c_out, 2, 2], 5)?;
        let e = match l.kind {
            Kind::Conv => eabs_kernels::conv2d_backward(
                x.as_tensor(),
                w.as_tensor(),
                &bad,
                l.stride,
                l.pad,
                only,
            ),
            Kind::ConvT => eabs_kernels::conv_transpose2d_backward(
                x.as_tensor(),
                w.as_tensor(),
                &bad,
                l.stride,
                l.pad,
                l.out_pad,
                only,
            ),
        };
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("output gradient") && e.contains("expected shape"),
            "{e}"
        );
    }
    Ok(())
}
