//! The process-wide switch to Candle's stock ops (`set_stock_ops`). In a test binary of its own:
//! the switch is global, and the other test binaries compare our kernels with Candle's while it
//! is off.

use candle_core::{Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn uniform(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// With the switch on, every op is bit-identical to Candle's own op (it *is* Candle's op); with
/// it off, our kernels agree with Candle to rounding but not bit for bit (so the bit-exact
/// comparison can tell the two paths apart), and switching back restores them.
#[test]
fn stock_switch_routes_every_op_through_candle() -> Result<()> {
    // MNIST enc2 (16 -> 32, k5 s2 p2) and dec3 (32 -> 16, k5 s2 T) of Table 9.
    let x = uniform(&[6, 16, 14, 14], 1)?;
    let w = uniform(&[32, 16, 5, 5], 2)?;
    let xt = uniform(&[6, 32, 11, 11], 3)?;
    let wt = uniform(&[32, 16, 5, 5], 4)?;
    let bn_g = uniform(&[32], 5)?;
    let bn_b = uniform(&[32], 6)?;
    let stock_conv = x.conv2d(&w, 2, 2, 1, 1)?;
    let stock_convt = xt.conv_transpose2d(&wt, 0, 0, 2, 1)?;

    assert!(!eabs_kernels::stock_ops());
    let ours_conv = eabs_kernels::conv2d(&x, &w, None, 2, 2)?;
    let ours_convt = eabs_kernels::conv_transpose2d(&xt, &wt, None, 2, 0, 0)?;
    let (ours_bn, _, _) = eabs_kernels::batch_norm_train(&ours_conv, &bn_g, &bn_b, 1e-5)?;
    assert!(max_abs_diff(&ours_conv, &stock_conv)? < 1e-4);
    assert!(max_abs_diff(&ours_convt, &stock_convt)? < 1e-4);
    assert!(
        max_abs_diff(&ours_conv, &stock_conv)? > 0.0
            || max_abs_diff(&ours_convt, &stock_convt)? > 0.0,
        "our kernels and Candle's agree bit for bit: the test cannot tell the paths apart"
    );

    assert!(!eabs_kernels::set_stock_ops(true));
    assert!(eabs_kernels::stock_ops());
    let conv = eabs_kernels::conv2d(&x, &w, None, 2, 2)?;
    let convt = eabs_kernels::conv_transpose2d(&xt, &wt, None, 2, 0, 0)?;
    assert_eq!(max_abs_diff(&conv, &stock_conv)?, 0.0);
    assert_eq!(max_abs_diff(&convt, &stock_convt)?, 0.0);
    // The fused ops fall back too, with the same semantics: batch norm, activations and the
    // gradient through them.
    let (bn, _, _) = eabs_kernels::batch_norm_train(&conv, &bn_g, &bn_b, 1e-5)?;
    assert!(max_abs_diff(&bn, &ours_bn)? < 1e-4);
    let v = Var::from_tensor(&convt)?;
    let y = eabs_kernels::sigmoid(&eabs_kernels::leaky_relu(v.as_tensor(), 0.2)?)?;
    let g = y.sum_all()?.backward()?;
    let gx = g.get(v.as_tensor()).expect("gradient of the stock path");
    let leaky = convt.maximum(&(&convt * 0.2)?)?;
    let s = candle_nn::ops::sigmoid(&leaky)?;
    let slope = convt.ge(0.0)?.where_cond(
        &Tensor::ones_like(&convt)?,
        &(Tensor::ones_like(&convt)? * 0.2)?,
    )?;
    let expected = ((&s * (1.0 - &s)?)? * slope)?;
    assert!(max_abs_diff(gx, &expected)? < 1e-5);

    assert!(eabs_kernels::set_stock_ops(false));
    let again = eabs_kernels::conv2d(&x, &w, None, 2, 2)?;
    assert_eq!(max_abs_diff(&again, &ours_conv)?, 0.0);
    Ok(())
}
