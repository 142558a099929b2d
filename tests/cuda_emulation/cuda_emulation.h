// The CUDA C subset used by kernels/*.cu, emulated on the host so that the same
// source text compiles with g++ and runs on the CPU.
//
// A launch runs one host thread per CUDA thread of a block; each thread walks
// the blocks of the grid in order, and all of them meet at a barrier after each
// block. So __syncthreads() is a barrier among the threads of the block being
// run, and a function-static array (what __shared__ becomes) is the shared
// memory of that block: blocks never overlap in time. Requires C++20 (std::barrier).
#pragma once

#include <barrier>
#include <math.h>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline thread_local std::barrier<>* current_block_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

inline void __syncthreads() { current_block_barrier->arrive_and_wait(); }

// Runs kernel() as every thread of a 1-D grid of `grid` blocks of `block` threads.
template <typename Kernel>
void launch(unsigned grid, unsigned block, const Kernel& kernel)
{
    std::barrier<> block_barrier(block);
    std::vector<std::jthread> threads;
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
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
