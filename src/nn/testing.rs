//! Test helpers shared by the ops' tests: seeded tensors, differences, and a gradient
//! check by central finite differences.

use candle_core::{Device, Shape, Tensor, Var};

/// Seeded standard-normal f64 tensor (candle's CPU generator cannot be seeded).
pub fn randn<S: Into<Shape>>(shape: S, seed: u64) -> Tensor {
    use rand::Rng;
    let shape = shape.into();
    let mut rng = crate::rng::rng_from_seed(seed);
    let v: Vec<f64> = (0..shape.elem_count()).map(|_| rng.sample(rand_distr::StandardNormal)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Largest absolute difference of two f64 tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

/// Checks autograd's gradient of the scalar `f(x)` against central differences with step
/// 1e-5, element by element, within `tolerance` (f64 throughout).
pub fn check_input_gradient(x: &Tensor, f: impl Fn(&Tensor) -> Tensor, tolerance: f64) {
    let xv = Var::from_tensor(x).unwrap();
    let grads = f(xv.as_tensor()).backward().unwrap();
    let analytic = grads.get(&xv).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let value = |v: Vec<f64>| f(&Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap()).to_scalar::<f64>().unwrap();
    for i in 0..base.len() {
        let bumped = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            value(v)
        };
        let numeric = (bumped(1e-5) - bumped(-1e-5)) / 2e-5;
        assert!((numeric - analytic[i]).abs() < tolerance, "element {i}: {numeric} vs {}", analytic[i]);
    }
}
