// The CUDA C subset used by kernels/*.cu, emulated on the host so that the same
// source text compiles with g++ and runs on the CPU. Requires C++20
// (std::barrier, std::atomic_ref).
//
// Two launchers:
// * launch(): one host thread per CUDA thread of a block; each thread walks
//   the blocks of the grid in order, and all of them meet at a barrier after
//   each block. So __syncthreads() is a barrier among the threads of the block
//   being run, and a function-static array (what __shared__ becomes) is the
//   shared memory of that block: blocks never overlap in time.
// * launch_cooperative(): every block at once, one host thread per CUDA
//   thread of the whole grid (keep grids tiny), a barrier per block, and
//   dynamic shared memory per block. This is what a kernel with a grid-wide
//   barrier needs: every block resident, as a cooperative launch guarantees
//   on the GPU. Function-static __shared__ arrays are NOT per block here (all
//   blocks share one), so kernels launched this way use dynamic shared memory
//   only; launch() gives no dynamic shared memory.
// Atomics and __threadfence() have real semantics (std::atomic_ref, a
// sequentially consistent fence), so a kernel's own grid barrier runs as is.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline thread_local std::barrier<>* current_block_barrier = nullptr;
inline thread_local unsigned char* current_dynamic_shared = nullptr;   // this thread's block's

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

// `extern __shared__` has no C++ equivalent: kernels declare their dynamic
// shared memory with this macro (their own definition, for CUDA, is skipped
// when it is already defined).
#define DYNAMIC_SHARED_MEMORY(real, name) real* const name = reinterpret_cast<real*>(current_dynamic_shared)

inline void __syncthreads() { current_block_barrier->arrive_and_wait(); }

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// Spinning (a kernel waiting at its grid barrier) sleeps; a thread still
// spinning this long after its launch began waits for a block that will never
// arrive, so the process stops with a message instead of hanging the tests.
inline constexpr std::chrono::seconds SPIN_LIMIT{60};
inline thread_local std::chrono::steady_clock::time_point launch_started;

inline void __nanosleep(unsigned ns)
{
    if (std::chrono::steady_clock::now() - launch_started > SPIN_LIMIT) {
        std::fputs("cuda_emulation: a thread has waited 60 s at a grid barrier that is never released\n", stderr);
        std::abort();
    }
    std::this_thread::sleep_for(std::chrono::nanoseconds(ns));
}

inline unsigned atomicAdd(unsigned* address, unsigned value)
{
    return std::atomic_ref<unsigned>(*address).fetch_add(value);
}

inline unsigned atomicExch(unsigned* address, unsigned value)
{
    return std::atomic_ref<unsigned>(*address).exchange(value);
}

// Runs kernel() as every thread of a 1-D grid of `grid` blocks of `block` threads, block after block.
template <typename Kernel>
void launch(unsigned grid, unsigned block, const Kernel& kernel)
{
    std::barrier<> block_barrier(block);
    std::vector<std::jthread> threads;
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            launch_started = std::chrono::steady_clock::now();
            current_block_barrier = &block_barrier;
            threadIdx = {t};
            blockDim = {block};
            gridDim = {grid};
            for (unsigned b = 0; b < grid; ++b) {
                blockIdx = {b};
                kernel();
                block_barrier.arrive_and_wait();   // the next block starts with all of this one done
            }
        });
    }
}   // the jthreads join here

// Bytes of guard after each block's dynamic shared memory, and their value.
inline constexpr unsigned SHARED_GUARD_BYTES = 64;
inline constexpr unsigned char SHARED_GUARD = 0xA5;

// Runs kernel() as every thread of a 1-D grid with all blocks at once, each
// block with `shared_bytes` of its own dynamic shared memory. That memory
// starts as 0xFF bytes (NaN as float or double), so a read of an element the
// kernel never wrote shows. Returns false if a block wrote past its end.
template <typename Kernel>
bool launch_cooperative(unsigned grid, unsigned block, unsigned shared_bytes, const Kernel& kernel)
{
    std::vector<std::unique_ptr<std::barrier<>>> block_barriers;
    std::vector<std::vector<unsigned char>> shared;
    for (unsigned b = 0; b < grid; ++b) {
        block_barriers.push_back(std::make_unique<std::barrier<>>(block));
        shared.emplace_back(shared_bytes + SHARED_GUARD_BYTES, 0xFF);   // new[] aligns to 16 bytes
        std::fill(shared[b].begin() + shared_bytes, shared[b].end(), SHARED_GUARD);
    }
    {
        std::vector<std::jthread> threads;
        for (unsigned b = 0; b < grid; ++b) {
            for (unsigned t = 0; t < block; ++t) {
                threads.emplace_back([&, b, t] {
                    launch_started = std::chrono::steady_clock::now();
                    current_block_barrier = block_barriers[b].get();
                    current_dynamic_shared = shared[b].data();
                    threadIdx = {t};
                    blockIdx = {b};
                    blockDim = {block};
                    gridDim = {grid};
                    kernel();
                });
            }
        }
    }   // the jthreads join here
    for (const auto& memory : shared) {
        for (unsigned k = shared_bytes; k < memory.size(); ++k) {
            if (memory[k] != SHARED_GUARD) return false;
        }
    }
    return true;
}
