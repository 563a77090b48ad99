// What the compiled kernels need from torch, and no more: at::Tensor with its pybind11 casters,
// the factory functions they call, at::parallel_for. torch/extension.h (all of libtorch's C++
// API) took 48 s of a kernel's ~55 s build on the 2-core machine; these headers take 20 s, and a
// clean `make test` builds four kernels. Included by every backends/*.cpp kernel.

#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <torch/csrc/utils/pybind.h>
