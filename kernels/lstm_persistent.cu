// Persistent LSTM recurrence: one launch runs all T steps of one layer and
// window, forward or backward.
//
// The per-step path (lstm_cell.cu) launches a cuBLAS product and a cell kernel
// per step, and W_h travels from L2 to the SMs every step. Here every block
// owns a contiguous slice of `units` hidden units j0 .. j0+n-1 (n = units, or
// fewer in the last block) and keeps the part of W_h those units need in
// dynamic shared memory, loaded once per launch. Each step then reads only the
// previous step's state from global memory, and a grid-wide barrier separates
// the steps. The big products stay in cuBLAS on the host side: x_t Wx for all
// steps before the forward launch; dWx = X^T dA, dWh = H_prev^T dA,
// db = sum of dA and dxs = dA Wx^T after the backward launch.
//
// Gate blocks i, f, g, o along the 4H axis (as in torch.nn.LSTM); each step is
// the cell of the NumPy reference (the docstring of ltexec.backends.numpy.backend
// has the equations). Backward, step t = T-1 .. 0, with
// dc = dcT on entry: dh = dhs_t + (t == T-1 ? dhT : da_{t+1} Wh^T), and
// finally dh0 = da_0 Wh^T, dc0 = dc. The arithmetic is that of lstm_cell.cu,
// term by term, so both paths give the same activations and gradients up to
// the order of the W_h sums.
//
// Thread mapping. A block's work in a step is B * n (row b, unit u) pairs,
// u fastest; thread x takes pairs x, x + blockDim.x, ... (the same pairs every
// step). A pair computes everything of its (b, j = j0 + u): forward the four
// pre-activations (four dot products of length H, h_{t-1} row b against the
// shared W_h columns j, H+j, 2H+j, 3H+j) and the fused gate maths; backward
// dh (one dot product of length 4H, row b of da_{t+1} against the shared row
// j of W_h) and the fused gate gradients. Every sum runs in a fixed order and
// no data is accumulated with atomics, so the same inputs give the same bits
// on every run, whatever `units` and the block size.
//
// Grid-wide barrier: our own (grid_barrier below), not cooperative groups.
// cooperative_groups::this_grid().sync() is defined in <cooperative_groups.h>,
// which NVRTC does not find without an include path (NVRTC 13.5: "could not
// open source file"), and these sources compile as single strings. The
// barrier is an arrival counter and a generation number in global memory: a
// block arrives with one atomic add after a __threadfence() (its writes of the
// step are visible device-wide before its arrival counts); the last block to
// arrive re-arms the counter and bumps the generation; the others spin on a
// volatile read of the generation (with a short __nanosleep between reads),
// then __threadfence() before the block reads what the other blocks wrote. This is the pattern cooperative groups' grid
// sync uses. It is correct ONLY when every block of the grid is resident at
// once: a spinning block never gives its SM back, so a block still waiting for
// an SM would never arrive and the grid would hang.
// Buffers that one block writes and other blocks read in the same launch (hs
// forward, gates backward, and h0 which shares loads with hs) are not
// `const __restrict__`, so they are never read through the non-coherent
// read-only cache.
//
// Launch contract (both kernels):
//   grid     = ceil(H / units) blocks, 1-D; ALL must be resident at once. The
//              host checks max active blocks per SM (occupancy API, with this
//              block size and shared memory) x SM count >= grid when it plans
//              the launch and again before every launch, and otherwise runs
//              the per-step kernels. The grid is semantic (block b owns units
//              b*units..): CuPy's cooperative launch may shrink a 1-D grid
//              that does not fit, with only a warning, so the host turns that
//              warning into an error rather than trust the launch to refuse.
//   block    = 1-D, any size up to 1024; best a multiple of 32 near B * units
//              (one pair per thread), e.g. 128 or 256. Registers per thread x
//              block must stay within the SM's 64K registers.
//   dynamic shared memory = 4 * H * units * sizeof(real) bytes (the W_h part
//              of the block). Above 48 KB the host must first raise the
//              kernel's cudaFuncAttributeMaxDynamicSharedMemorySize; the
//              opt-in limit per block is 163 KB on sm_80 and 227 KB on sm_90
//              (per SM 164 KB and 228 KB, less 1 KB reserved per block).
//              H = 400: units = 4 gives 100 blocks of 25,600 B (float) or
//              51,200 B (double); units = 8 gives 50 blocks of 51,200 B or
//              102,400 B. Both fit with one block per SM on an A100 (108 SMs)
//              and an H100/H200 (132 SMs).
//   barrier  = 2 unsigned ints in global memory: barrier[0] (arrivals) must be
//              0 at launch and every launch leaves it 0, so zeroing it once
//              when allocated is enough; barrier[1] (generation) may hold any
//              value. Launches that may run at the same time need separate
//              pairs. The forward passes T-1 barriers, the backward T.
//   buffers  = gates (T,B,4H) is updated in place: x_t Wx -> i, f, g, o in
//              the forward, i, f, g, o -> da in the backward (the cached
//              activations are consumed, as in the per-step path). The other
//              outputs (hs, cs; dh0, dc0) must not alias any argument.
//   sizes    = T * B * 4H < 2^31 (32-bit indices).
//
// The kernels are templates over the float type (`real` is float or double);
// the host asks for kernel<float> or kernel<double> by name expression.
// No includes: the loader puts device_math.cuh (real_exp, real_tanh, sigmoid)
// in front, and NVRTC compiles the whole as one string.

// The block's dynamic shared memory as an array of `real` (its size is set at
// launch). C++ has no `extern __shared__`; the CPU emulation of the tests
// defines this macro before the file, to per-block host memory.
#ifndef DYNAMIC_SHARED_MEMORY
#define DYNAMIC_SHARED_MEMORY(real, name)                            \
    extern __shared__ __align__(16) unsigned char name##_bytes[];    \
    real* const name = reinterpret_cast<real*>(name##_bytes)
#endif

// Back off briefly while spinning. __nanosleep exists from sm_70 on; older GPUs
// (which CUDA 12 still compiles for) just spin.
__device__ __forceinline__ void spin_pause()
{
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
    __nanosleep(32);
#endif
}

// Wait until every block of the grid has called this (the k-th call of every
// block meets the k-th of all others), with every write made before it by any
// thread visible to every thread after it. All threads of every block call it.
// state[0]: arrivals in the current barrier; state[1]: barriers completed.
__device__ __forceinline__ void grid_barrier(unsigned int* state)
{
    __syncthreads();                                    // the whole block is done with the step
    if (threadIdx.x == 0) {
        volatile unsigned int* generation = state + 1;
        const unsigned int seen = *generation;          // cannot change before this block arrives
        __threadfence();                                // release: the block's writes, then its arrival
        if (atomicAdd(state, 1u) == gridDim.x - 1) {    // the last block to arrive:
            atomicExch(state, 0u);                      //   re-arm the counter (no one arrives
            __threadfence();                            //   again before the release below),
            atomicAdd(state + 1, 1u);                   //   then release the others
        } else {
            while (*generation == seen) spin_pause();
        }
        __threadfence();                                // acquire: the other blocks' writes, then our reads
    }
    __syncthreads();
}

// sum over k < n of row[k] * w[k * stride], n a multiple of 4 (here 4H), in
// four partial sums (partial p takes k = p, p + 4, ...) added as
// (s0 + s1) + (s2 + s3): the independent sums hide the FMA latency a single
// accumulator waits on at every term, and the fixed order keeps the result
// bitwise the same from run to run.
template <typename real>
__device__ __forceinline__ real strided_dot(const real* row, const real* w, int stride, int n)
{
    real s0 = real(0), s1 = real(0), s2 = real(0), s3 = real(0);
    for (int k = 0; k < n; k += 4) {
        s0 += row[k] * w[k * stride];
        s1 += row[k + 1] * w[(k + 1) * stride];
        s2 += row[k + 2] * w[(k + 2) * stride];
        s3 += row[k + 3] * w[(k + 3) * stride];
    }
    return (s0 + s1) + (s2 + s3);
}

// All T forward steps of one layer. gates[t] holds x_t Wx on entry (one cuBLAS
// product for the window) and the activations i, f, g, o on exit: what the
// backward pass needs, with cs, c0 (as lstm_cell_forward leaves them).
template <typename real>
__global__ void lstm_persistent_forward(
    real* __restrict__ gates,          // (T,B,4H) in: x_t Wx; out: i, f, g, o
    const real* __restrict__ Wh,       // (H,4H)
    const real* __restrict__ bias,     // (4H,)
    const real* h0,                    // (B,H) h_{-1}
    const real* __restrict__ c0,       // (B,H) c_{-1}
    real* hs,                          // (T,B,H) out: h_t, read by every block at step t+1
    real* __restrict__ cs,             // (T,B,H) out: c_t
    unsigned int* barrier,             // (2,) grid barrier state (see the header)
    int T, int B, int H, int units)
{
    DYNAMIC_SHARED_MEMORY(real, w);    // (H,4,units): w[(4k + q) units + u] = Wh[k, qH + j0 + u]
    const int j0 = blockIdx.x * units;                     // the block's first unit
    const int n = H - j0 < units ? H - j0 : units;         // its number of units
    for (int e = threadIdx.x; e < H * 4 * units; e += blockDim.x) {
        const int k = e / (4 * units);
        const int q = (e / units) % 4;
        const int u = e % units;
        if (u < n) w[e] = Wh[k * 4 * H + q * H + j0 + u];
    }
    __syncthreads();

    for (int t = 0; t < T; ++t) {
        const real* h_prev = t == 0 ? h0 : hs + (t - 1) * B * H;   // (B,H) written by every block
        const real* c_prev = t == 0 ? c0 : cs + (t - 1) * B * H;   // (B,H) written by this thread
        for (int p = threadIdx.x; p < B * n; p += blockDim.x) {
            const int b = p / n;
            const int u = p - b * n;
            const int j = j0 + u;
            const real* h = h_prev + b * H;                // row b of h_{t-1}
            const real* wk = w + u;                        // w[k][0][u], k = 0
            real ri = real(0), rf = real(0), rg = real(0), ro = real(0);   // (h_{t-1} Wh)[b, qH + j]
            for (int k = 0; k < H; ++k, wk += 4 * units) {
                const real hk = h[k];
                ri += hk * wk[0];
                rf += hk * wk[units];
                rg += hk * wk[2 * units];
                ro += hk * wk[3 * units];
            }
            real* a = gates + (t * B + b) * 4 * H;         // row b of step t
            const real i = sigmoid(a[j] + ri + bias[j]);
            const real f = sigmoid(a[H + j] + rf + bias[H + j]);
            const real g = real_tanh(a[2 * H + j] + rg + bias[2 * H + j]);
            const real o = sigmoid(a[3 * H + j] + ro + bias[3 * H + j]);
            const real c_t = f * c_prev[b * H + j] + i * g;
            const int n_t = (t * B + b) * H + j;           // (t, b, j) in (T,B,H)
            cs[n_t] = c_t;
            hs[n_t] = o * real_tanh(c_t);
            a[j] = i;
            a[H + j] = f;
            a[2 * H + j] = g;
            a[3 * H + j] = o;
        }
        if (t + 1 < T) grid_barrier(barrier);              // h_t complete before step t+1 reads it
    }
}

// All T backward steps of one layer, from t = T-1 down to 0. gates[t] holds
// the forward's activations on entry and da_t (the gradient of the gate
// pre-activations) on exit; the host computes the weight, bias and input
// gradients from all da at once. dc0 carries dc from step to step (each
// element is read and written by one thread only) and holds dc_{-1} on exit.
template <typename real>
__global__ void lstm_persistent_backward(
    real* gates,                       // (T,B,4H) in: i, f, g, o; out: da, read by every block at step t-1
    const real* __restrict__ cs,       // (T,B,H) c_t
    const real* __restrict__ c0,       // (B,H) c_{-1}
    const real* __restrict__ Wh,       // (H,4H)
    const real* __restrict__ dhs,      // (T,B,H) gradient of h_t from the layer's output
    const real* __restrict__ dhT,      // (B,H) gradient of h_{T-1} from after the window
    const real* __restrict__ dcT,      // (B,H) gradient of c_{T-1} from after the window
    real* __restrict__ dh0,            // (B,H) out: gradient of h_{-1}
    real* __restrict__ dc0,            // (B,H) out: gradient of c_{-1}
    unsigned int* barrier,             // (2,) grid barrier state (see the header)
    int T, int B, int H, int units)
{
    DYNAMIC_SHARED_MEMORY(real, w);    // (4H,units): w[col units + u] = Wh[j0 + u, col]
    const int j0 = blockIdx.x * units;
    const int n = H - j0 < units ? H - j0 : units;
    for (int e = threadIdx.x; e < 4 * H * units; e += blockDim.x) {
        const int col = e / units;
        const int u = e - col * units;
        if (u < n) w[e] = Wh[(j0 + u) * 4 * H + col];
    }
    __syncthreads();

    for (int t = T - 1; t >= 0; --t) {
        for (int p = threadIdx.x; p < B * n; p += blockDim.x) {
            const int b = p / n;
            const int u = p - b * n;
            const int j = j0 + u;
            const int bj = b * H + j;                      // (b, j) in (B,H)
            const int n_t = t * B * H + bj;                // (t, b, j) in (T,B,H)
            const real dh = dhs[n_t] + (t == T - 1
                ? dhT[bj]
                : strided_dot(gates + ((t + 1) * B + b) * 4 * H, w + u, units, 4 * H));  // (da_{t+1} Wh^T)[b, j]
            real* a = gates + (t * B + b) * 4 * H;         // row b of step t
            const real i = a[j];
            const real f = a[H + j];
            const real g = a[2 * H + j];
            const real o = a[3 * H + j];
            const real c_prev = t == 0 ? c0[bj] : cs[n_t - B * H];
            const real tanh_c = real_tanh(cs[n_t]);
            const real dc = (t == T - 1 ? dcT[bj] : dc0[bj]) + dh * o * (real(1) - tanh_c * tanh_c);
            const real d_o = dh * tanh_c;
            a[j] = dc * g * i * (real(1) - i);
            a[H + j] = dc * c_prev * f * (real(1) - f);
            a[2 * H + j] = dc * i * (real(1) - g * g);
            a[3 * H + j] = d_o * o * (real(1) - o);
            dc0[bj] = dc * f;
        }
        grid_barrier(barrier);                             // da_t complete before step t-1 reads it
    }
    for (int p = threadIdx.x; p < B * n; p += blockDim.x) {
        const int b = p / n;
        const int u = p - b * n;
        dh0[b * H + j0 + u] = strided_dot(gates + b * 4 * H, w + u, units, 4 * H);   // (da_0 Wh^T)[b, j]
    }
}
