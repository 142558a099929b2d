// Kernels with known results that check the emulation itself (tests/cuda_emulation).

// Every thread with a global index below n writes that index and its coordinates.
extern "C" __global__ void thread_coordinates(int* index, int* coords, int n)
{
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    index[k] = k;
    coords[4 * k + 0] = threadIdx.x;
    coords[4 * k + 1] = blockIdx.x;
    coords[4 * k + 2] = blockDim.x;
    coords[4 * k + 3] = gridDim.x;
}

// Per-block sums by a shared-memory tree reduction: correct only if __syncthreads
// is a real barrier and each block gets its own (reused) shared array.
// blockDim.x must be a power of two no larger than 256.
template <typename real>
__global__ void block_sums(const real* x, real* sums, int n)
{
    __shared__ real partial[256];
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    partial[threadIdx.x] = k < n ? x[k] : real(0);
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) sums[blockIdx.x] = partial[0];
}
