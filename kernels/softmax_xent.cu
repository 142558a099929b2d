// Fused softmax cross-entropy over the output layer, forward and backward in one pass.
//
// For every position n (a row of the (N, V) logits, N = T*B) with target id
// y[n] and answer mask m[n] (1 on target characters, 0 elsewhere):
//   log_p     = z - max(z) - log(sum(exp(z - max(z))))
//   row_loss  = -m * log_p[y]
//   dlogits   = m * (exp(log_p) - onehot(y))
//   correct   = 1 if m != 0 and the first argmax of z is y, else 0
// The host sums row_loss and correct (a deterministic reduction, unlike
// atomics). A target outside [0, V) is never read: its row gets correct = -1,
// zero loss and zero gradient, and the host reports the bad id.
//
// One block per row; the block's threads stride over the V columns and
// combine their partial max/argmax and sum through shared memory.
// blockDim.x must be a power of two no larger than SOFTMAX_MAX_BLOCK.
// Templates over the float type (`real` is float or double); no includes: the
// loader puts device_math.cuh (real_exp, real_log) in front, one string in all.

#define SOFTMAX_MAX_BLOCK 256

template <typename real>
__global__ void softmax_xent(
    const real* __restrict__ logits,   // (N,V)
    const long long* __restrict__ y,   // (N,) target ids
    const real* __restrict__ mask,     // (N,) 0 or 1
    real* __restrict__ dlogits,        // (N,V) out
    real* __restrict__ row_loss,       // (N,) out
    int* __restrict__ row_correct,     // (N,) out: 1, 0, or -1 for an id outside [0, V)
    int N, int V)
{
    __shared__ real best[SOFTMAX_MAX_BLOCK];       // per-thread max, then the row's max
    __shared__ int best_at[SOFTMAX_MAX_BLOCK];     // its first column
    __shared__ real total[SOFTMAX_MAX_BLOCK];      // per-thread sum of exp, then the row's sum

    const int row = blockIdx.x;
    const int tid = threadIdx.x;
    const real* z = logits + (long long)row * V;
    real* dz = dlogits + (long long)row * V;

    // Max and first argmax. A thread visits its columns in increasing order, so
    // '>' keeps the first of equal values; a thread without columns holds column 0.
    real m = z[tid < V ? tid : 0];
    int m_at = tid < V ? tid : 0;
    for (int v = tid + blockDim.x; v < V; v += blockDim.x) {
        if (z[v] > m) {
            m = z[v];
            m_at = v;
        }
    }
    best[tid] = m;
    best_at[tid] = m_at;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (tid < half) {
            const real other = best[tid + half];
            const int other_at = best_at[tid + half];
            if (other > best[tid] || (other == best[tid] && other_at < best_at[tid])) {
                best[tid] = other;
                best_at[tid] = other_at;
            }
        }
        __syncthreads();
    }
    m = best[0];
    m_at = best_at[0];

    // Sum of exp(z - max): every term is at most 1, the largest exactly 1.
    real s = real(0);
    for (int v = tid; v < V; v += blockDim.x) s += real_exp(z[v] - m);
    total[tid] = s;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (tid < half) total[tid] += total[tid + half];
        __syncthreads();
    }
    const real log_z = real_log(total[0]);

    const long long target = y[row];
    const bool valid = target >= 0 && target < V;
    const real w = valid ? mask[row] : real(0);
    for (int v = tid; v < V; v += blockDim.x) {
        const real p = real_exp(z[v] - m - log_z);
        dz[v] = (p - (v == target ? real(1) : real(0))) * w;
    }
    if (tid == 0) {
        row_loss[row] = valid ? -((z[target] - m - log_z) * w) : real(0);
        row_correct[row] = valid ? (w != real(0) && m_at == target) : -1;
    }
}
