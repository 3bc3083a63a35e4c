/* asyncio_agent.interp._prelude: a callable that runs a prelude, then its target, adding no frame.
 *
 * Prelude(before, target)(*args, **kwargs) calls before(*args, **kwargs), ignores its
 * result (and any Exception it raises), then returns target(*args, **kwargs).
 *
 * Why in C: CPython calls warnings._warn_unawaited_coroutine(coro) from a coroutine's
 * finalizer, and that function warns with stacklevel=2, i.e. it names the frame that
 * was running when the coroutine died, and the default filter prints once per such
 * line. A Python wrapper would be that frame: every warning would name the wrapper
 * and be printed once per process. A C callable has no frame, so CPython's warning is
 * exactly what it is without the agent.
 *
 * Never looks a name up and holds nothing but its two callables.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *before;
    PyObject *target;
} PreludeObject;

static PyObject *
prelude_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *before, *target;
    static char *names[] = {"before", "target", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:Prelude", names, &before, &target)) {
        return NULL;
    }
    if (!PyCallable_Check(before) || !PyCallable_Check(target)) {
        PyErr_SetString(PyExc_TypeError, "Prelude(before, target): both must be callable");
        return NULL;
    }
    PreludeObject *self = (PreludeObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(before);
    self->before = before;
    Py_INCREF(target);
    self->target = target;
    return (PyObject *)self;
}

static PyObject *
prelude_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    PreludeObject *self = (PreludeObject *)op;
    PyObject *result = PyObject_Call(self->before, args, kwargs);
    if (result == NULL) {
        /* An Exception of the prelude is its own business; a KeyboardInterrupt or
           SystemExit (a signal handler ran inside it) goes on as if it had hit the
           target itself. */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
    }
    else {
        Py_DECREF(result);
    }
    return PyObject_Call(self->target, args, kwargs);
}

static int
prelude_traverse(PyObject *op, visitproc visit, void *arg)
{
    PreludeObject *self = (PreludeObject *)op;
    Py_VISIT(self->before);
    Py_VISIT(self->target);
    return 0;
}

static int
prelude_clear(PyObject *op)
{
    PreludeObject *self = (PreludeObject *)op;
    Py_CLEAR(self->before);
    Py_CLEAR(self->target);
    return 0;
}

static void
prelude_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    prelude_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *
prelude_repr(PyObject *op)
{
    PreludeObject *self = (PreludeObject *)op;
    return PyUnicode_FromFormat("<asyncio_agent prelude to %R>", self->target);
}

static PyObject *
prelude_get_wrapped(PyObject *op, void *closure)
{
    PreludeObject *self = (PreludeObject *)op;
    if (self->target == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(self->target);
    return self->target;
}

static PyGetSetDef prelude_getset[] = {
    {"__wrapped__", prelude_get_wrapped, NULL, "the target, called after the prelude", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PreludeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asyncio_agent.interp._prelude.Prelude",
    .tp_basicsize = sizeof(PreludeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Prelude(before, target): call before(...), then return target(...), "
              "adding no frame of its own",
    .tp_new = prelude_new,
    .tp_call = prelude_call,
    .tp_traverse = prelude_traverse,
    .tp_clear = prelude_clear,
    .tp_dealloc = prelude_dealloc,
    .tp_repr = prelude_repr,
    .tp_getset = prelude_getset,
};

static struct PyModuleDef prelude_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "asyncio_agent.interp._prelude",
    .m_doc = "A frameless prelude callable (see agent/_prelude.c).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__prelude(void)
{
    if (PyType_Ready(&PreludeType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&prelude_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&PreludeType);
    if (PyModule_AddObject(module, "Prelude", (PyObject *)&PreludeType) < 0) {
        Py_DECREF(&PreludeType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
