// Device helpers every kernel source shares. The loader (ltexec.kernels.source)
// puts this text in front of each .cu file, so every compile is still one string
// without includes (NVRTC needs no include path; the CPU emulation of the tests
// compiles the same string).

// exp, log and tanh at the precision of `real` (C's exp/log/tanh would promote float to double).
__device__ __forceinline__ float real_exp(float x) { return expf(x); }
__device__ __forceinline__ double real_exp(double x) { return exp(x); }
__device__ __forceinline__ float real_log(float x) { return logf(x); }
__device__ __forceinline__ double real_log(double x) { return log(x); }
__device__ __forceinline__ float real_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double real_tanh(double x) { return tanh(x); }

// Logistic function without overflow: exp is only ever taken of -|x|.
template <typename real>
__device__ __forceinline__ real sigmoid(real x)
{
    const real e = real_exp(x >= real(0) ? -x : x);
    return x >= real(0) ? real(1) / (real(1) + e) : e / (real(1) + e);
}
