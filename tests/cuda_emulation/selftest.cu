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

// Grid barrier number `round` (0, 1, ...) of a launch, in its simplest form: a
// counter that only grows, *arrivals = 0 at launch. Independent of the
// kernels' own barrier, so that the kernels below check the emulation alone.
__device__ void wait_for_all_blocks(unsigned* arrivals, unsigned round)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(arrivals, 1u);
        const volatile unsigned* count = arrivals;
        while (*count < (round + 1) * gridDim.x) __nanosleep(100);
        __threadfence();
    }
    __syncthreads();
}

// `rounds` grid-wide sums, each depending on the previous one across blocks.
// Round r: block k sums (r + 1) * x over its blockDim.x elements (a tree
// reduction in its dynamic shared memory of blockDim.x reals, a power of two)
// and adds the total that block k + 1 (mod grid) found in round r - 1; after a
// grid barrier every block adds up all partial sums, in block order, into its
// totals[r][k]. Correct only if all blocks run at once, the grid barrier
// holds and every block has its own shared memory.
template <typename real>
__global__ void grid_sums(const real* x, real* partials, real* totals, unsigned* arrivals, int n, int rounds)
{
    DYNAMIC_SHARED_MEMORY(real, partial);
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned grid = gridDim.x;
    for (int r = 0; r < rounds; ++r) {
        partial[threadIdx.x] = k < n ? real(r + 1) * x[k] : real(0);
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half /= 2) {
            if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            const real before = r > 0 ? totals[(r - 1) * grid + (blockIdx.x + 1) % grid] : real(0);
            partials[r * grid + blockIdx.x] = partial[0] + before;
        }
        wait_for_all_blocks(arrivals, 2 * r);
        if (threadIdx.x == 0) {
            real total = real(0);
            for (unsigned b = 0; b < grid; ++b) total += partials[r * grid + b];
            totals[r * grid + blockIdx.x] = total;
        }
        wait_for_all_blocks(arrivals, 2 * r + 1);
    }
}

// Every thread writes its block's index into its cell of the block's dynamic
// shared memory (blockDim.x ints); after a grid barrier it reads the next
// thread's cell: its own block's index only if no other block shares the memory.
extern "C" __global__ void shared_is_per_block(int* seen, unsigned* arrivals)
{
    DYNAMIC_SHARED_MEMORY(int, cells);
    cells[threadIdx.x] = blockIdx.x;
    wait_for_all_blocks(arrivals, 0);
    seen[blockIdx.x * blockDim.x + threadIdx.x] = cells[(threadIdx.x + 1) % blockDim.x];
}
