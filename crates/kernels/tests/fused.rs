//! leaky_relu and batch_norm_train against Candle compositions in f64 and finite differences.
mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{assert_close, uniform};

const TOL: f64 = 1e-5;

#[test]
fn leaky_relu_matches_candle_forward_and_backward() -> Result<()> {
    for (shape, slope) in [
        (vec![3, 4, 5, 5], 0.2),
        (vec![70_000], 0.0),
        (vec![2, 9], 1.0),
    ] {
        let x0 = uniform(&shape, 3)?;
        let r = uniform(&shape, 4)?;
        let x = Var::from_tensor(&x0)?;
        let y = eabs_kernels::leaky_relu(x.as_tensor(), slope)?;
        let g = (&y * &r)?.sum_all()?.backward()?;
        let x64 = Var::from_tensor(&x0.to_dtype(DType::F64)?)?;
        let y64 = x64.as_tensor().maximum(&(x64.as_tensor() * slope)?)?;
        let g64 = (&y64 * r.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
        assert_close("leaky_relu forward", &y, &y64, TOL);
        if slope < 1.0 {
            // At slope 1 Candle's max() splits the gradient between both (equal) branches.
            assert_close(
                "leaky_relu backward",
                g.get(x.as_tensor()).unwrap(),
                g64.get(x64.as_tensor()).unwrap(),
                TOL,
            );
        }
    }
    Ok(())
}

#[test]
fn leaky_relu_strided_input_and_fallback() -> Result<()> {
    let x = uniform(&[4, 6], 1)?.t()?;
    let y = eabs_kernels::leaky_relu(&x, 0.1)?;
    let want: Vec<f32> = x
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|&v| if v > 0.0 { v } else { 0.1 * v })
        .collect();
    assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, want);
    let y64 = eabs_kernels::leaky_relu(&x.to_dtype(DType::F64)?, 0.1)?;
    assert_close("leaky_relu f64", &y64, &y, 1e-7);
    let e = eabs_kernels::leaky_relu(&x, 1.5).unwrap_err().to_string();
    assert!(e.contains("leaky_relu: slope"), "{e}");
    Ok(())
}

/// Candle composition of training-mode batch norm (any dtype), as in `lib.rs`'s fallback but
/// written independently: normalise over (n, h, w) per channel with the biased variance.
fn bn_reference(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let c = x.dim(1)?;
    let dims: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
    let mut bshape = vec![1; x.rank()];
    bshape[1] = c;
    let mean = x.mean_keepdim(dims.clone())?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(dims)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(&gamma.reshape(bshape.clone())?)?
        .broadcast_add(&beta.reshape(bshape)?)
}

#[test]
fn batch_norm_matches_candle_forward_and_backward() -> Result<()> {
    // (n, c, h, w) as after the convolutions, a strided view, and (n, c) as in a discriminator.
    for (shape, transpose) in [
        (vec![5, 4, 6, 6], false),
        (vec![3, 3, 5, 7], true),
        (vec![9, 6], false),
    ] {
        let mut x0 = uniform(&shape, 11)?;
        // A channel offset far from zero tests the shifted accumulation of the variance.
        x0 = (x0 * 3.0)?.broadcast_add(&Tensor::new(100f32, &Device::Cpu)?)?;
        let c = shape[1];
        let gamma0 = (uniform(&[c], 12)? + 1.5)?;
        let beta0 = uniform(&[c], 13)?;
        let r = uniform(&shape, 14)?;
        let run = |dtype: DType, ours: bool| -> Result<Vec<Tensor>> {
            let x = Var::from_tensor(&x0.to_dtype(dtype)?)?;
            let g = Var::from_tensor(&gamma0.to_dtype(dtype)?)?;
            let b = Var::from_tensor(&beta0.to_dtype(dtype)?)?;
            let xv = if transpose {
                x.as_tensor().transpose(2, 3)?.transpose(2, 3)?
            } else {
                x.as_tensor().clone()
            };
            let xv = if transpose {
                xv.transpose(0, 1)?.contiguous()?.transpose(0, 1)?
            } else {
                xv
            };
            let y = if ours {
                let (y, mean, var) =
                    eabs_kernels::batch_norm_train(&xv, g.as_tensor(), b.as_tensor(), 1e-5)?;
                let want_mean = xv
                    .to_dtype(DType::F64)?
                    .transpose(0, 1)?
                    .flatten_from(1)?
                    .mean(1)?;
                assert_close("batch mean", &mean, &want_mean, 1e-6);
                assert!(var.min(0)?.to_scalar::<f32>()? >= 0.0);
                y
            } else {
                bn_reference(&xv, g.as_tensor(), b.as_tensor(), 1e-5)?
            };
            let grads = (&y * r.to_dtype(dtype)?)?.sum_all()?.backward()?;
            Ok(vec![
                y,
                grads.get(x.as_tensor()).unwrap().clone(),
                grads.get(g.as_tensor()).unwrap().clone(),
                grads.get(b.as_tensor()).unwrap().clone(),
            ])
        };
        let ours = run(DType::F32, true)?;
        let want = run(DType::F64, false)?;
        for (name, (a, b)) in ["forward", "d/dx", "d/dgamma", "d/dbeta"]
            .iter()
            .zip(ours.iter().zip(&want))
        {
            // d/dx of a normalised layer involves a cancellation (g - mean(g) - x̂ mean(g x̂)) of
            // terms much larger than the result; f32 inputs bound its accuracy to ~1e-5.
            let tol = if *name == "d/dx" { 1e-4 } else { TOL };
            assert_close(&format!("batch_norm {shape:?} {name}"), a, b, tol);
        }
    }
    Ok(())
}

#[test]
fn batch_norm_gradients_match_finite_differences() -> Result<()> {
    let shape = [3, 2, 3, 3];
    let x = uniform(&shape, 21)?;
    let gamma = (uniform(&[2], 22)? + 1.5)?;
    let beta = uniform(&[2], 23)?;
    let r: Vec<f32> = uniform(&shape, 24)?.flatten_all()?.to_vec1()?;
    let rt = Tensor::from_vec(r.clone(), &shape, &Device::Cpu)?;
    let xv = Var::from_tensor(&x)?;
    let gv = Var::from_tensor(&gamma)?;
    let (y, _, _) = eabs_kernels::batch_norm_train(xv.as_tensor(), gv.as_tensor(), &beta, 1e-5)?;
    let grads = (&y * &rt)?.sum_all()?.backward()?;
    let loss = |x: &Tensor, g: &Tensor| -> f64 {
        let (y, _, _) = eabs_kernels::batch_norm_train(x, g, &beta, 1e-5).unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        y.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    // Nonlinear in x: h = 1e-2 gives truncation error O(h²) ~ 1e-4 and rounding ~ 1e-5.
    let h = 1e-2f32;
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let gx: Vec<f32> = grads
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()?
        .to_vec1()?;
    for idx in (0..xs.len()).step_by(5) {
        let at = |d: f32| {
            let mut v = xs.clone();
            v[idx] += d;
            loss(&Tensor::from_vec(v, &shape, &Device::Cpu).unwrap(), &gamma)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        assert!(
            (fd - gx[idx] as f64).abs() < 2e-3 * (1.0 + fd.abs()),
            "d/dx[{idx}]: fd {fd} vs {}",
            gx[idx]
        );
    }
    let gs: Vec<f32> = gamma.to_vec1()?;
    let gg: Vec<f32> = grads.get(gv.as_tensor()).unwrap().to_vec1()?;
    for idx in 0..2 {
        let at = |d: f32| {
            let mut v = gs.clone();
            v[idx] += d;
            loss(&x, &Tensor::from_vec(v, 2, &Device::Cpu).unwrap())
        };
        // Linear in gamma: exact up to rounding.
        let fd = (at(0.5) - at(-0.5)) / 1.0;
        assert!(
            (fd - gg[idx] as f64).abs() < 1e-4 * (1.0 + fd.abs()),
            "d/dgamma[{idx}]: fd {fd} vs {}",
            gg[idx]
        );
    }
    // beta was a plain tensor: pruned.
    assert!(grads.get(&beta).is_none());
    Ok(())
}

#[test]
fn batch_norm_fallback_and_errors() -> Result<()> {
    let x = uniform(&[4, 3, 2, 2], 31)?;
    let g = uniform(&[3], 32)?;
    let b = uniform(&[3], 33)?;
    let (y, m, v) = eabs_kernels::batch_norm_train(&x, &g, &b, 1e-3)?;
    let (y64, m64, v64) = eabs_kernels::batch_norm_train(
        &x.to_dtype(DType::F64)?,
        &g.to_dtype(DType::F64)?,
        &b.to_dtype(DType::F64)?,
        1e-3,
    )?;
    assert_eq!(y64.dtype(), DType::F64);
    assert_close("fallback y", &y, &y64, 1e-5);
    assert_close("fallback mean", &m, &m64, 1e-5);
    assert_close("fallback var", &v, &v64, 1e-5);
    let e = eabs_kernels::batch_norm_train(&x, &uniform(&[4], 1)?, &b, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("batch_norm_train: gamma") && e.contains("[3]"),
        "{e}"
    );
    let e = eabs_kernels::batch_norm_train(&x, &g, &b, -1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eps"), "{e}");
    let e = eabs_kernels::batch_norm_train(&x.flatten_all()?, &g, &b, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank >= 2"), "{e}");
    Ok(())
}

#[test]
fn sigmoid_matches_candle_forward_and_backward() -> Result<()> {
    let x0 = (uniform(&[3, 1, 28, 28], 41)? * 8.0)?;
    let r = uniform(&[3, 1, 28, 28], 42)?;
    let x = Var::from_tensor(&x0)?;
    let y = eabs_kernels::sigmoid(x.as_tensor())?;
    let g = (&y * &r)?.sum_all()?.backward()?;
    let x64 = Var::from_tensor(&x0.to_dtype(DType::F64)?)?;
    let y64 = (x64.as_tensor().neg()?.exp()? + 1.0)?.recip()?;
    let g64 = (&y64 * r.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
    assert_close("sigmoid forward", &y, &y64, TOL);
    assert_close(
        "sigmoid backward",
        g.get(x.as_tensor()).unwrap(),
        g64.get(x64.as_tensor()).unwrap(),
        TOL,
    );
    // Saturation: no NaN at the ends, exact limits.
    let ends =
        eabs_kernels::sigmoid(&Tensor::new(&[-200f32, 200.], &Device::Cpu)?)?.to_vec1::<f32>()?;
    assert_eq!(ends, [0.0, 1.0]);
    Ok(())
}

#[test]
fn batch_norm_eval_matches_candle_and_prunes() -> Result<()> {
    let shape = [4, 3, 5, 5];
    let x0 = uniform(&shape, 51)?;
    let r = uniform(&shape, 52)?;
    let gamma0 = (uniform(&[3], 53)? + 1.5)?;
    let beta0 = uniform(&[3], 54)?;
    let mean = uniform(&[3], 55)?;
    let var = (uniform(&[3], 56)?.abs()? + 0.5)?;
    let run = |dtype: DType, ours: bool| -> Result<Vec<Tensor>> {
        let x = Var::from_tensor(&x0.to_dtype(dtype)?)?;
        let g = Var::from_tensor(&gamma0.to_dtype(dtype)?)?;
        let b = Var::from_tensor(&beta0.to_dtype(dtype)?)?;
        let (m, v) = (mean.to_dtype(dtype)?, var.to_dtype(dtype)?);
        let y = if ours {
            eabs_kernels::batch_norm_eval(
                x.as_tensor(),
                g.as_tensor(),
                b.as_tensor(),
                &m,
                &v,
                1e-5,
            )?
        } else {
            let s = (1, 3, 1, 1);
            x.as_tensor()
                .broadcast_sub(&m.reshape(s)?)?
                .broadcast_div(&(v + 1e-5)?.sqrt()?.reshape(s)?)?
                .broadcast_mul(&g.as_tensor().reshape(s)?)?
                .broadcast_add(&b.as_tensor().reshape(s)?)?
        };
        let grads = (&y * r.to_dtype(dtype)?)?.sum_all()?.backward()?;
        Ok(vec![
            y,
            grads.get(x.as_tensor()).unwrap().clone(),
            grads.get(g.as_tensor()).unwrap().clone(),
            grads.get(b.as_tensor()).unwrap().clone(),
        ])
    };
    let (ours, want) = (run(DType::F32, true)?, run(DType::F64, false)?);
    for (name, (a, b)) in ["forward", "d/dx", "d/dgamma", "d/dbeta"]
        .iter()
        .zip(ours.iter().zip(&want))
    {
        assert_close(&format!("batch_norm_eval {name}"), a, b, TOL);
    }
    // Plain-tensor scale and shift: only the input gets a gradient.
    let x = Var::from_tensor(&x0)?;
    let (s, t) = (uniform(&[3], 57)?, uniform(&[3], 58)?);
    let y = eabs_kernels::channel_affine(x.as_tensor(), &s, &t)?;
    let grads = y.sum_all()?.backward()?;
    assert!(
        grads.get(&s).is_none() && grads.get(&t).is_none() && grads.get(x.as_tensor()).is_some()
    );
    let e = eabs_kernels::channel_affine(&x0, &uniform(&[2], 1)?, &t)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("channel_affine: scale") && e.contains("[3]"),
        "{e}"
    );
    Ok(())
}
