// The end-of-sequence test of the verify ops (host + device): an accepted token that is one
// of eos_ids [E] ends the request's walk. E is small (a handful of ids), so a linear scan.
#pragma once

#include <cstdint>

#include "dspark/host_device.h"

namespace dspark {

DSPARK_HD bool is_eos(int64_t token, const int64_t* eos_ids, int64_t num_eos) {
  for (int64_t e = 0; e < num_eos; ++e)
    if (eos_ids[e] == token) return true;
  return false;
}

}  // namespace dspark
