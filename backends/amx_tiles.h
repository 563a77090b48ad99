// What every AMX kernel here shares: the tile configuration and the OS's permission to use the
// tiles. Included by dense_kernel_amx.h (bfloat16) and quantization/kernel_int8_amx.h (int8).

#pragma once

#if defined(__AMX_TILE__) && defined(__linux__)
#define RG_AMX_TILES 1

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace rg_tiles {

// ldtilecfg's operand (palette 1): rows and bytes per row of each of the 8 tiles.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  void set(int tile, int num_rows, int bytes_per_row) {
    rows[tile] = static_cast<uint8_t>(num_rows);
    colsb[tile] = static_cast<uint16_t>(bytes_per_row);
  }
};

// Linux gives a process AMX's 8 KiB of tile state only once it asks for it (arch_prctl); torch's
// oneDNN asks the same way. The answer holds for every thread of the process.
inline bool permitted() {
  static const bool granted = [] {
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return granted;
}

// Whether AMX kernels run in this process: the OS grants the tiles and ROUTEGATE_NO_AMX is not 1.
// Read once, so every product of a process takes one path (a request's outputs never depend on
// its batch).
inline bool enabled() {
  static const bool on = [] {
    const char* off = std::getenv("ROUTEGATE_NO_AMX");
    return !(off && std::strcmp(off, "1") == 0) && permitted();
  }();
  return on;
}

}  // namespace rg_tiles

#endif  // __AMX_TILE__ && __linux__
