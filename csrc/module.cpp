// Makes `from trpo_torchrl import _C` load this library, which runs every TORCH_LIBRARY_FRAGMENT
// and TORCH_LIBRARY_IMPL in it. The ops are reached through torch.ops.trpo_torchrl, so the module
// itself needs no functions (and no pybind11).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "trpo_torchrl compiled ops (registered with torch.library)",
      -1,  // no per-module state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
