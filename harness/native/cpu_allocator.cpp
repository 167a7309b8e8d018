// A CPU allocator that counts the bytes it has handed out, so the harness can read a call's peak memory on the
// CPU the way torch.cuda.max_memory_allocated does on a GPU. It allocates and frees exactly as c10's default CPU
// allocator does (c10::alloc_cpu / c10::free_cpu); it only keeps each block's size, under a lock.
// Built and loaded by harness/cpu_memory.py (g++ against the installed torch); C functions for ctypes.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace {

std::mutex guard;
std::unordered_map<void*, std::size_t> sizes;
std::int64_t current = 0;
std::int64_t peak = 0;

void tracked_delete(void* ptr) {
  if (ptr == nullptr) {
    return;
  }
  {
    std::lock_guard<std::mutex> hold(guard);
    auto found = sizes.find(ptr);
    if (found != sizes.end()) {
      current -= static_cast<std::int64_t>(found->second);
      sizes.erase(found);
    }
  }
  c10::free_cpu(ptr);
}

struct TrackingAllocator final : public c10::Allocator {
  c10::DataPtr allocate(std::size_t nbytes) override {
    void* ptr = c10::alloc_cpu(nbytes);
    if (ptr != nullptr) {
      std::lock_guard<std::mutex> hold(guard);
      sizes[ptr] = nbytes;
      current += static_cast<std::int64_t>(nbytes);
      if (current > peak) {
        peak = current;
      }
    }
    return {ptr, ptr, &tracked_delete, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &tracked_delete; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

TrackingAllocator tracking;

}  // namespace

extern "C" {

// Make this the CPU allocator (blocks handed out before keep their own deleters); 1 when it took effect.
int harness_install(void) {
  c10::SetCPUAllocator(&tracking, /*priority=*/100);
  return c10::GetCPUAllocator() == &tracking ? 1 : 0;
}

// Bytes handed out and not yet freed.
long long harness_current(void) {
  std::lock_guard<std::mutex> hold(guard);
  return current;
}

// Restart the high-water mark at the current bytes; returns them.
long long harness_reset_peak(void) {
  std::lock_guard<std::mutex> hold(guard);
  peak = current;
  return peak;
}

// The most bytes out at once since the last reset.
long long harness_peak(void) {
  std::lock_guard<std::mutex> hold(guard);
  return peak;
}
}
