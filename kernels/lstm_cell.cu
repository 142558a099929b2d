// Fused LSTM cell kernels: one step of the forward and of the backward pass.
//
// The window's matrix products run in cuBLAS (x_t Wx for all steps at once,
// h_{t-1} Wh and da_t Wh^T per step); everything elementwise between two
// products is one kernel here. One thread owns one (row b, unit j) of the
// (B, H) state and the four gate pre-activations of that unit, which lie at
// columns j, H+j, 2H+j, 3H+j of a (B, 4H) row (gate blocks i, f, g, o, as in
// torch.nn.LSTM). Consecutive threads touch consecutive j, so every load and
// store is coalesced.
//
// The kernels are templates over the float type (`real` is float or double);
// the host asks for kernel<float> or kernel<double> by name expression.
// No includes: the loader puts device_math.cuh (real_exp, real_tanh, sigmoid)
// in front, and NVRTC compiles the whole as one string.

// Forward step t: the reference's cell (ltexec.backends.numpy.backend's
// docstring has the equations), a = x_t Wx + h_{t-1} Wh + b in, h_t, c_t out.
// The activations i, f, g, o overwrite the projection in `gates`: they are
// what the backward pass keeps (with c_{t-1} and c_t).
// Launch: at least B*H threads in 1-D blocks of any size.
template <typename real>
__global__ void lstm_cell_forward(
    real* __restrict__ gates,         // (B,4H) in: x_t Wx; out: i, f, g, o
    const real* __restrict__ rec,     // (B,4H) h_{t-1} Wh
    const real* __restrict__ bias,    // (4H,)
    const real* __restrict__ c_prev,  // (B,H) c_{t-1}
    real* __restrict__ c,             // (B,H) out: c_t
    real* __restrict__ h,             // (B,H) out: h_t
    int B, int H)
{
    const int n = blockIdx.x * blockDim.x + threadIdx.x;   // flat (b, j)
    if (n >= B * H) return;
    const int b = n / H;
    const int j = n - b * H;
    real* a = gates + b * 4 * H;              // row b of the projection
    const real* r = rec + b * 4 * H;          // row b of the recurrent product

    const real i = sigmoid(a[j] + r[j] + bias[j]);
    const real f = sigmoid(a[H + j] + r[H + j] + bias[H + j]);
    const real g = real_tanh(a[2 * H + j] + r[2 * H + j] + bias[2 * H + j]);
    const real o = sigmoid(a[3 * H + j] + r[3 * H + j] + bias[3 * H + j]);
    const real c_t = f * c_prev[n] + i * g;

    c[n] = c_t;
    h[n] = o * real_tanh(c_t);
    a[j] = i;
    a[H + j] = f;
    a[2 * H + j] = g;
    a[3 * H + j] = o;
}

// Backward step t, the reference's (same docstring), given dh = dh_out +
// dh_next (the loss's gradient of h_t from the layer's output and from step
// t+1) and dc (of c_t, from step t+1); it leaves da and dc_{t-1} = dc * f.
// da overwrites the activations in `gates`; the host then computes
// dh_{t-1} = da Wh^T, and after the last step the window's weight and bias
// gradients from all da at once. dc is updated in place (each thread reads
// and writes only its own element).
// Launch: at least B*H threads in 1-D blocks of any size.
template <typename real>
__global__ void lstm_cell_backward(
    real* __restrict__ gates,          // (B,4H) in: i, f, g, o; out: da
    const real* __restrict__ c_prev,   // (B,H) c_{t-1}
    const real* __restrict__ c,        // (B,H) c_t
    const real* __restrict__ dh_out,   // (B,H) gradient of h_t from the layer's output
    const real* __restrict__ dh_next,  // (B,H) gradient of h_t from step t+1
    real* __restrict__ dc,             // (B,H) in: gradient of c_t from step t+1; out: of c_{t-1}
    int B, int H)
{
    const int n = blockIdx.x * blockDim.x + threadIdx.x;   // flat (b, j)
    if (n >= B * H) return;
    const int b = n / H;
    const int j = n - b * H;
    real* a = gates + b * 4 * H;

    const real i = a[j];
    const real f = a[H + j];
    const real g = a[2 * H + j];
    const real o = a[3 * H + j];
    const real dh = dh_out[n] + dh_next[n];
    const real tanh_c = real_tanh(c[n]);
    const real dc_t = dc[n] + dh * o * (real(1) - tanh_c * tanh_c);
    const real d_o = dh * tanh_c;

    a[j] = dc_t * g * i * (real(1) - i);
    a[H + j] = dc_t * c_prev[n] * f * (real(1) - f);
    a[2 * H + j] = dc_t * i * (real(1) - g * g);
    a[3 * H + j] = d_o * o * (real(1) - o);
    dc[n] = dc_t * f;
}
