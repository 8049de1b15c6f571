// The Python module conure._C (built by setup.py only): importing it runs the TORCH_LIBRARY registrations of the
// other sources.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "conure's compiled operators", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
