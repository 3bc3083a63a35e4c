/* The agent's per-task hot path in C (optional; agent/sites.py and agent/hooks.py hold
 * the Python version it mirrors, used whenever this module is absent or switched off).
 * Part of the seam for interpreter internals (agent/interp/): it reads CPython's frame
 * records. It receives every name and constant it shares with Python as an argument
 * (agent/interp/compiled.py builds it); it looks nothing up by name.
 *
 * Callables:
 *   Recorder(internal_ids, slow, table, attr, maintenance, time_bits, span_attr)
 *       the site cache of one SiteRecorder; record_task(task) as a call, the span_probe
 *       the wrappers consult, and use_table (records go to `table`, else to `attr`).
 *   CreateTask(original, recorder)
 *       the patched `create_task` of a loop class: calls `original` with the very
 *       arguments it got, then records; adds no Python frame to the stack.
 *   RegistryAdd(table, add)(task)
 *       the wrapper of asyncio's task registry `add` (agent/records.py).
 *   frame_chain(depth)
 *       (code, f_lasti) of the caller's frames as this module's walk sees them: the
 *       check at import that the walk agrees with sys._getframe on this interpreter.
 *
 * Why it is fast: the walk reads CPython's own frame records (no frame object is made
 * for asyncio.create_task's frame, which is new each time), internal code objects are
 * remembered in a short array, and the (site, caller) cache is a small array of slots
 * keyed by code pointer and offset instead of dicts keyed by ints. A cache miss calls
 * SiteRecorder._record_slow, the same Python code the Python path uses, so both
 * paths give the same records.
 *
 * Frames: on 3.11+ the walk reads struct _PyInterpreterFrame from CPython's internal
 * header (its layout differs in every minor version: this is compiled per version),
 * skipping incomplete frames exactly as PyFrame_GetBack does. On 3.10 frames are
 * PyFrameObjects already.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#if !defined(__linux__)
#error "built on Linux only: task ages use CLOCK_MONOTONIC, which is time.monotonic() there"
#endif
#if PY_VERSION_HEX < 0x030A0000 || PY_VERSION_HEX >= 0x030E0000
#error "built for Python 3.10 to 3.13 only (the agent runs its Python path elsewhere)"
#endif
#ifdef Py_GIL_DISABLED
#error "the free-threaded build is not supported (the Python path runs instead)"
#endif
#ifndef CLOCK_MONOTONIC
#error "CLOCK_MONOTONIC is needed (the module is optional: the Python path runs instead)"
#endif

#if PY_VERSION_HEX >= 0x030B0000
#define Py_BUILD_CORE 1
#include "internal/pycore_frame.h"
#undef Py_BUILD_CORE
#endif

/* ------------------------------------------------------------- frame cursor */

#if PY_VERSION_HEX >= 0x030B0000
typedef _PyInterpreterFrame *Cursor;

static inline Cursor
skip_incomplete(Cursor frame)
{
    while (frame != NULL && _PyFrame_IsIncomplete(frame)) {
        frame = frame->previous;
    }
    return frame;
}

static inline Cursor
cursor_current(void)
{
    PyThreadState *tstate = PyThreadState_Get();
#if PY_VERSION_HEX >= 0x030D0000
    return skip_incomplete(tstate->current_frame);
#else
    return skip_incomplete(tstate->cframe->current_frame);
#endif
}

static inline Cursor
cursor_back(Cursor frame)
{
    return skip_incomplete(frame->previous);
}

/* The frame's code object (borrowed), or NULL if it is not one. */
static inline PyCodeObject *
cursor_code(Cursor frame)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *executable = frame->f_executable;
    return PyCode_Check(executable) ? (PyCodeObject *)executable : NULL;
#else
    return frame->f_code;
#endif
}

/* frame.f_lasti as Python shows it (a byte offset, -1 before the first instruction). */
static inline int
cursor_lasti(Cursor frame)
{
    int lasti = _PyInterpreterFrame_LASTI(frame);
    return lasti < 0 ? -1 : lasti * (int)sizeof(_Py_CODEUNIT);
}

#else /* 3.10 */
typedef PyFrameObject *Cursor;

static inline Cursor
cursor_current(void)
{
    return PyEval_GetFrame();
}

static inline Cursor
cursor_back(Cursor frame)
{
    return frame->f_back;
}

static inline PyCodeObject *
cursor_code(Cursor frame)
{
    return frame->f_code;
}

static inline int
cursor_lasti(Cursor frame)
{
    return frame->f_lasti < 0 ? -1 : frame->f_lasti * (int)sizeof(_Py_CODEUNIT);
}
#endif

#if PY_VERSION_HEX < 0x030B0000
static int
PyFrame_GetLasti(PyFrameObject *frame)
{
    return cursor_lasti(frame);
}
#endif

/* The frame object for `frame`, `steps` complete frames above the current one (a new
 * reference), or None if the public API's walk does not arrive at the same code and
 * offset. Made only on a cache miss: it is what SiteRecorder._record_slow takes. */
static PyObject *
frame_object(int steps, PyCodeObject *code, int offset)
{
    PyFrameObject *frame = PyEval_GetFrame();
    Py_XINCREF(frame);
    for (int i = 0; i < steps && frame != NULL; i++) {
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    if (frame != NULL) {
        PyCodeObject *frame_code = PyFrame_GetCode(frame);
        int same = frame_code == code && PyFrame_GetLasti(frame) == offset;
        Py_DECREF(frame_code);
        if (same) {
            return (PyObject *)frame;
        }
        Py_DECREF(frame);
    }
    Py_RETURN_NONE;
}

/* time.monotonic(): on Linux both read CLOCK_MONOTONIC. */
static double
monotonic_now(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return 0.0;
    }
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}


/* The task that registered last (RegistryAdd), compared by address only and never
 * dereferenced: create_task's task registered iff it is this one. */
static PyObject *last_registered = NULL;

/* ------------------------------------------------------------------ Recorder */

#define SLOTS 256         /* (site, caller) pairs served without a miss; a power of 2 */
#define INTERNAL_CODES 32 /* internal code objects remembered without a set lookup */

/* Records are (site index << time_bits) | creation millisecond; time_bits comes from
 * agent/sites.py (Recorder's argument). */

/* A (site, caller) pair and its site index. Unlike the Python path's cache it does not
 * expire each millisecond: the index of a (code, offset, caller code, caller offset)
 * never changes, and each task's record gets the current millisecond. */
typedef struct {
    PyCodeObject *code; /* strong references: the pointers stay theirs */
    PyCodeObject *parent_code;
    unsigned long long site_bits; /* site index << time_bits; 0: empty */
    PyObject *record;             /* the last record made here (shared by the tasks of */
    unsigned long long record_ms; /* one millisecond, which saves an int per task) */
    int offset;
    int parent_offset;
} Slot;

/* Every this many recorded tasks the table's size is checked (records.maybe_sweep). */
#define MAINTENANCE_EVERY 4096

typedef struct {
    PyObject_HEAD
    PyObject *internal_ids; /* set: id(code) of frames that are never a site */
    PyObject *slow;         /* slow(frame, now) -> record: SiteRecorder._record_slow */
    PyObject *table;        /* dict: id(task) -> record (asyncio_agent.records.TABLE) */
    PyObject *attr;         /* the record attribute's name (records.RECORD_ATTR) */
    PyObject *span_attr;    /* the span attribute's name (sites.SPAN_ATTR) */
    PyObject *span_probe;   /* None, or called for each task (asyncio_agent.tracing) */
    PyObject *maintenance;  /* called every MAINTENANCE_EVERY tasks: records.maybe_sweep */
    vectorcallfunc vectorcall;
    unsigned long long time_mask; /* (1 << time_bits) - 1 */
    int use_table;         /* records go to `table` (the registry hook is installed) */
    unsigned int recorded; /* tasks recorded, modulo 2**32 */
    int internal_count;
    PyCodeObject *internal[INTERNAL_CODES];
    Slot slots[SLOTS];
} Recorder;

static inline int
known_internal(Recorder *self, PyCodeObject *code)
{
    for (int i = 0; i < self->internal_count; i++) {
        if (self->internal[i] == code) {
            return 1;
        }
    }
    return 0;
}

/* 1 if id(code) is in the internal set (and remembers it), 0 if not, -1 on error. */
static int
check_internal(Recorder *self, PyCodeObject *code)
{
    PyObject *key = PyLong_FromVoidPtr(code);
    if (key == NULL) {
        return -1;
    }
    int found = PySet_Contains(self->internal_ids, key);
    Py_DECREF(key);
    if (found > 0 && self->internal_count < INTERNAL_CODES) {
        Py_INCREF(code);
        self->internal[self->internal_count++] = code;
    }
    return found;
}

static inline Slot *
slot_for(Recorder *self, PyCodeObject *code, int offset)
{
    uintptr_t key = ((uintptr_t)code >> 4) ^ ((uintptr_t)offset * 0x9E3779B1u);
    return &self->slots[(key ^ (key >> 8)) & (SLOTS - 1)];
}

static void
fill_slot(Slot *slot, PyCodeObject *code, int offset, PyCodeObject *parent_code,
          int parent_offset, unsigned long long site_bits)
{
    Slot old = *slot;
    Py_INCREF(code);
    Py_INCREF(parent_code);
    slot->code = code;
    slot->offset = offset;
    slot->parent_code = parent_code;
    slot->parent_offset = parent_offset;
    slot->site_bits = site_bits;
    slot->record = NULL;
    /* Released last: a release may run Python code (weakref callbacks). */
    Py_XDECREF(old.code);
    Py_XDECREF(old.parent_code);
    Py_XDECREF(old.record);
}

/* The record of a task created now at `slot`'s site (a new reference), or NULL. */
static PyObject *
slot_record(Slot *slot, unsigned long long ms)
{
    if (slot->record == NULL || slot->record_ms != ms) {
        PyObject *record = PyLong_FromUnsignedLongLong(slot->site_bits | ms);
        if (record == NULL) {
            return NULL;
        }
        PyObject *old = slot->record;
        slot->record = record;
        slot->record_ms = ms;
        Py_XDECREF(old); /* an int: runs no Python code */
    }
    return Py_NewRef(slot->record);
}

static inline unsigned long long
millisecond(double now, unsigned long long mask)
{
    /* int(now * 1000) in the Python path */
    return (unsigned long long)(now * 1000.0) & mask;
}

/* The record for a task created by the code running in `frame`, `steps` frames above
 * the current one (a new reference), or NULL with an exception set. */
static PyObject *
site_record(Recorder *self, Cursor frame, int steps)
{
    if (++self->recorded % MAINTENANCE_EVERY == 0) {
        /* Here, not in the finalizer or per task: the table's sweep (Python code). */
        PyObject *done = PyObject_CallNoArgs(self->maintenance);
        if (done == NULL) {
            return NULL;
        }
        Py_DECREF(done);
    }
    double now = monotonic_now();
    while (frame != NULL) {
        PyCodeObject *code = cursor_code(frame);
        if (code == NULL) {
            break;
        }
        if (known_internal(self, code)) {
            frame = cursor_back(frame);
            steps++;
            continue;
        }
        int offset = cursor_lasti(frame);
        Cursor parent = cursor_back(frame);
        PyCodeObject *parent_code = parent == NULL ? NULL : cursor_code(parent);
        int parent_offset = parent_code == NULL ? -1 : cursor_lasti(parent);
        Slot *slot = slot_for(self, code, offset);
        if (slot->code == code && slot->offset == offset && parent_code != NULL &&
            slot->parent_code == parent_code && slot->parent_offset == parent_offset) {
            return slot_record(slot, millisecond(now, self->time_mask));
        }
        int internal = check_internal(self, code);
        if (internal < 0) {
            return NULL;
        }
        if (internal) {
            frame = parent;
            steps++;
            continue;
        }
        /* A miss: the Python path classifies, resolves and caches. */
        PyObject *frame_obj = frame_object(steps, code, offset);
        int found = frame_obj != Py_None; /* else the Python code gets None: no site */
        PyObject *when = PyFloat_FromDouble(now);
        PyObject *record = NULL;
        if (when != NULL) {
            PyObject *args[2] = {frame_obj, when};
            record = PyObject_Vectorcall(self->slow, args, 2, NULL);
        }
        Py_XDECREF(when);
        Py_XDECREF(frame_obj);
        if (record == NULL) {
            return NULL;
        }
        /* The slow path may have found this code internal and gone further up; then
         * the record is not this frame's to cache. Nor is one without a caller or
         * without a site (the Python path caches neither). */
        unsigned long long bits = 0;
        if (found && parent_code != NULL && PyLong_CheckExact(record)) {
            bits = PyLong_AsUnsignedLongLong(record) & ~self->time_mask;
            if (PyErr_Occurred()) {
                PyErr_Clear();
                bits = 0;
            }
        }
        if (bits) {
            internal = check_internal(self, code);
            if (internal < 0) {
                Py_DECREF(record);
                return NULL;
            }
            if (!internal) {
                fill_slot(slot, code, offset, parent_code, parent_offset, bits);
            }
        }
        return record;
    }
    /* Only internal frames (or none): no site, as in the Python path. */
    PyErr_SetString(PyExc_LookupError, "no application frame");
    return NULL;
}

/* Store `record` for `task`: in the table if it registered, else on the task. */
static int
store_record(Recorder *self, PyObject *task, PyObject *record, int in_table)
{
    if (in_table) {
        PyObject *key = PyLong_FromVoidPtr(task);
        if (key == NULL) {
            return -1;
        }
        int status = PyDict_SetItem(self->table, key, record);
        Py_DECREF(key);
        return status;
    }
    return PyObject_SetAttr(task, self->attr, record);
}

static PyObject *
Recorder_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Recorder *self = (Recorder *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "record_task(task) takes one argument");
        return NULL;
    }
    /* Called as record_task(task) from Python code (a Python create_task wrapper):
     * that caller is the wrapper, not the creator, as sys._getframe(2) skips it in
     * the Python path. */
    Cursor caller = cursor_current();
    PyObject *record = site_record(self, caller == NULL ? NULL : cursor_back(caller), 1);
    if (record == NULL) {
        return NULL;
    }
    int status = store_record(self, args[0], record, self->use_table);
    Py_DECREF(record);
    if (status < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Recorder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *internal_ids, *slow, *table, *attr, *maintenance, *span_attr;
    int time_bits;
    static char *names[] = {"internal_ids", "slow",      "table",     "attr",
                            "maintenance",  "time_bits", "span_attr", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OO!UOiU:Recorder", names, &PySet_Type,
                                     &internal_ids, &slow, &PyDict_Type, &table, &attr,
                                     &maintenance, &time_bits, &span_attr)) {
        return NULL;
    }
    if (time_bits < 1 || time_bits > 62) {
        PyErr_SetString(PyExc_ValueError, "time_bits must be between 1 and 62");
        return NULL;
    }
    Recorder *self = (Recorder *)type->tp_alloc(type, 0); /* zeroed: empty slots */
    if (self == NULL) {
        return NULL;
    }
    self->internal_ids = Py_NewRef(internal_ids);
    self->slow = Py_NewRef(slow);
    self->table = Py_NewRef(table);
    self->attr = Py_NewRef(attr);
    self->span_attr = Py_NewRef(span_attr);
    self->time_mask = (1ULL << time_bits) - 1;
    self->span_probe = Py_NewRef(Py_None);
    self->maintenance = Py_NewRef(maintenance);
    self->vectorcall = Recorder_vectorcall;
    return (PyObject *)self;
}

static int
Recorder_traverse(Recorder *self, visitproc visit, void *arg)
{
    Py_VISIT(self->internal_ids);
    Py_VISIT(self->slow);
    Py_VISIT(self->table);
    Py_VISIT(self->attr);
    Py_VISIT(self->span_attr);
    Py_VISIT(self->span_probe);
    Py_VISIT(self->maintenance);
    return 0;
}

static int
Recorder_clear(Recorder *self)
{
    Py_CLEAR(self->internal_ids);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->table);
    Py_CLEAR(self->attr);
    Py_CLEAR(self->span_attr);
    Py_CLEAR(self->span_probe);
    Py_CLEAR(self->maintenance);
    return 0;
}

static void
Recorder_dealloc(Recorder *self)
{
    PyObject_GC_UnTrack(self);
    Recorder_clear(self);
    for (int i = 0; i < self->internal_count; i++) {
        Py_CLEAR(self->internal[i]);
    }
    for (int i = 0; i < SLOTS; i++) {
        Py_CLEAR(self->slots[i].code);
        Py_CLEAR(self->slots[i].parent_code);
        Py_CLEAR(self->slots[i].record);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Recorder_get_span_probe(Recorder *self, void *closure)
{
    return Py_NewRef(self->span_probe ? self->span_probe : Py_None);
}

static int
Recorder_set_span_probe(Recorder *self, PyObject *value, void *closure)
{
    Py_XSETREF(self->span_probe, Py_NewRef(value ? value : Py_None));
    return 0;
}

static PyMemberDef Recorder_members[] = {
    {"use_table", T_INT, offsetof(Recorder, use_table), 0,
     "1: records go to the table (the registry hook is installed); 0: to the task."},
    {NULL},
};

static PyGetSetDef Recorder_getset[] = {
    {"span_probe", (getter)Recorder_get_span_probe, (setter)Recorder_set_span_probe,
     "None, or called (no arguments) for each new task; a result other than None is "
     "stored as task._asyncio_agent_span.",
     NULL},
    {NULL},
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asyncio_agent.interp._speedups.Recorder",
    .tp_doc = PyDoc_STR("Recorder(internal_ids, slow, table, attr, maintenance, time_bits, "
                        "span_attr): record_task(task), the hot path of asyncio_agent.sites "
                        "in C."),
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = Recorder_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Recorder, vectorcall),
    .tp_getset = Recorder_getset,
    .tp_members = Recorder_members,
    .tp_traverse = (traverseproc)Recorder_traverse,
    .tp_clear = (inquiry)Recorder_clear,
    .tp_dealloc = (destructor)Recorder_dealloc,
};

/* ---------------------------------------------------------------- CreateTask */

typedef struct {
    PyObject_HEAD
    PyObject *original; /* the loop class's own create_task */
    Recorder *recorder;
    PyObject *dict;     /* functools.wraps' attributes and the agent's mark */
    vectorcallfunc vectorcall;
} CreateTask;

/* What the Python wrapper does after the task exists; 0, or -1 with an exception. */
static int
after_create(CreateTask *self, PyObject *task, PyObject *registered)
{
    Recorder *recorder = self->recorder;
    /* No frame of ours is on the stack: the current frame is the creator's (or
     * asyncio.create_task's, which is internal). */
    PyObject *record = site_record(recorder, cursor_current(), 0);
    if (record == NULL) {
        return -1;
    }
    /* A task that did not register (an eager task that finished inside create_task,
     * or no registry hook) keeps its record itself: see agent/records.py. */
    int status = store_record(recorder, task, record, recorder->use_table && registered == task);
    Py_DECREF(record);
    if (status < 0) {
        return -1;
    }
    PyObject *probe = recorder->span_probe;
    if (probe != NULL && probe != Py_None) {
        Py_INCREF(probe);
        PyObject *span = PyObject_CallNoArgs(probe);
        Py_DECREF(probe);
        if (span == NULL) {
            return -1;
        }
        if (span != Py_None) {
            status = PyObject_SetAttr(task, recorder->span_attr, span);
        }
        Py_DECREF(span);
    }
    return status;
}

static PyObject *
CreateTask_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    CreateTask *self = (CreateTask *)op;
    last_registered = NULL;
    /* The arguments go through exactly as they came: name, context, eager_start,
     * whatever the loop takes. */
    PyObject *task = PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    PyObject *registered = last_registered;
    last_registered = NULL;
    if (task == NULL) {
        return NULL;
    }
    if (after_create(self, task, registered) < 0) {
        /* Never raise into the program for the agent's sake (as `except Exception`). */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            Py_DECREF(task);
            return NULL;
        }
        PyErr_Clear();
    }
    return task;
}

static PyObject *
CreateTask_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *original, *recorder;
    static char *names[] = {"original", "recorder", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!:CreateTask", names, &original,
                                     &RecorderType, &recorder)) {
        return NULL;
    }
    CreateTask *self = (CreateTask *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->original = Py_NewRef(original);
    self->recorder = (Recorder *)Py_NewRef(recorder);
    self->vectorcall = CreateTask_vectorcall;
    return (PyObject *)self;
}

/* A function binds to an instance; so does this (the loop is the first argument). */
static PyObject *
CreateTask_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static PyObject *
CreateTask_repr(CreateTask *self)
{
    return PyUnicode_FromFormat("<asyncio agent's wrapper of %R>", self->original);
}

static int
CreateTask_traverse(CreateTask *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->recorder);
    Py_VISIT(self->dict);
    return 0;
}

static int
CreateTask_clear(CreateTask *self)
{
    Py_CLEAR(self->original);
    Py_CLEAR(self->recorder);
    Py_CLEAR(self->dict);
    return 0;
}

static void
CreateTask_dealloc(CreateTask *self)
{
    PyObject_GC_UnTrack(self);
    CreateTask_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyGetSetDef CreateTask_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyTypeObject CreateTaskType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asyncio_agent.interp._speedups.CreateTask",
    .tp_doc = PyDoc_STR("CreateTask(original, recorder): a loop class's create_task, "
                        "recording each task's creation site."),
    .tp_basicsize = sizeof(CreateTask),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = CreateTask_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(CreateTask, vectorcall),
    .tp_descr_get = CreateTask_get,
    .tp_dictoffset = offsetof(CreateTask, dict),
    .tp_getset = CreateTask_getset,
    .tp_repr = (reprfunc)CreateTask_repr,
    .tp_traverse = (traverseproc)CreateTask_traverse,
    .tp_clear = (inquiry)CreateTask_clear,
    .tp_dealloc = (destructor)CreateTask_dealloc,
};

/* --------------------------------------------------------------- RegistryAdd */

typedef struct {
    PyObject_HEAD
    PyObject *table; /* asyncio_agent.records.TABLE */
    PyObject *add;   /* the registry's own add */
    vectorcallfunc vectorcall;
} RegistryAdd;

static PyObject *
RegistryAdd_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RegistryAdd *self = (RegistryAdd *)op;
    if (PyVectorcall_NARGS(nargsf) == 1 && kwnames == NULL) {
        /* A task registering owns its id now: a dead task's entry there goes. */
        last_registered = args[0];
        PyObject *key = PyLong_FromVoidPtr(args[0]);
        if (key == NULL) {
            return NULL;
        }
        int present = PyDict_Contains(self->table, key);
        if (present > 0 && PyDict_DelItem(self->table, key) < 0) {
            present = -1;
        }
        Py_DECREF(key);
        if (present < 0) {
            return NULL;
        }
    }
    return PyObject_Vectorcall(self->add, args, nargsf, kwnames);
}

static PyObject *
RegistryAdd_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *table, *add;
    static char *names[] = {"table", "add", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O:RegistryAdd", names, &PyDict_Type,
                                     &table, &add)) {
        return NULL;
    }
    RegistryAdd *self = (RegistryAdd *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->table = Py_NewRef(table);
    self->add = Py_NewRef(add);
    self->vectorcall = RegistryAdd_vectorcall;
    return (PyObject *)self;
}

static int
RegistryAdd_traverse(RegistryAdd *self, visitproc visit, void *arg)
{
    Py_VISIT(self->table);
    Py_VISIT(self->add);
    return 0;
}

static int
RegistryAdd_clear(RegistryAdd *self)
{
    Py_CLEAR(self->table);
    Py_CLEAR(self->add);
    return 0;
}

static void
RegistryAdd_dealloc(RegistryAdd *self)
{
    PyObject_GC_UnTrack(self);
    RegistryAdd_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject RegistryAddType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asyncio_agent.interp._speedups.RegistryAdd",
    .tp_doc = PyDoc_STR("RegistryAdd(table, add)(task): drop table[id(task)], then add(task)."),
    .tp_basicsize = sizeof(RegistryAdd),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = RegistryAdd_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(RegistryAdd, vectorcall),
    .tp_traverse = (traverseproc)RegistryAdd_traverse,
    .tp_clear = (inquiry)RegistryAdd_clear,
    .tp_dealloc = (destructor)RegistryAdd_dealloc,
};

/* --------------------------------------------------------------------- sweep */

/* Add id(item) to `live`; 0, or -1 with an exception set. */
static int
add_id(PyObject *live, PyObject *item)
{
    PyObject *key = PyLong_FromVoidPtr(item);
    int status = key == NULL ? -1 : PySet_Add(live, key);
    Py_XDECREF(key);
    return status;
}

/* id(x) for every live referent of the weak references in `refs` and every item of
 * `tasks` (both sets: iterating them runs no Python code), into `live`. 0, or -1 with
 * an exception set. */
static int
add_live_ids(PyObject *live, PyObject *refs, PyObject *tasks)
{
    PyObject *iterator = PyObject_GetIter(refs);
    if (iterator == NULL) {
        return -1;
    }
    PyObject *item;
    int status = 0;
    while (status == 0 && (item = PyIter_Next(iterator)) != NULL) {
        if (PyWeakref_Check(item)) {
#if PY_VERSION_HEX >= 0x030D0000
            PyObject *task;
            status = PyWeakref_GetRef(item, &task) < 0 ? -1 : 0;
#else
            PyObject *task = PyWeakref_GetObject(item); /* borrowed */
            task = task == Py_None ? NULL : Py_XNewRef(task);
#endif
            if (task != NULL) {
                status = add_id(live, task);
                Py_DECREF(task);
            }
        }
        Py_DECREF(item);
    }
    Py_DECREF(iterator);
    if (status < 0 || PyErr_Occurred()) {
        return -1;
    }
    iterator = PyObject_GetIter(tasks);
    if (iterator == NULL) {
        return -1;
    }
    while (status == 0 && (item = PyIter_Next(iterator)) != NULL) {
        status = add_id(live, item);
        Py_DECREF(item);
    }
    Py_DECREF(iterator);
    return status < 0 || PyErr_Occurred() ? -1 : 0;
}

static PyObject *
speedups_sweep(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_CheckExact(args[0]) || !PySet_Check(args[1]) ||
        !PySet_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "sweep(table: dict, refs: set, tasks: set)");
        return NULL;
    }
    PyObject *table = args[0];
    PyObject *live = PySet_New(NULL);
    PyObject *dead = PyList_New(0);
    if (live == NULL || dead == NULL || add_live_ids(live, args[1], args[2]) < 0) {
        goto error;
    }
    /* No Python code runs from here on: the table cannot change under the sweep. */
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(table, &pos, &key, &value)) {
        int alive = PySet_Contains(live, key);
        if (alive < 0 || (!alive && PyList_Append(dead, key) < 0)) {
            goto error;
        }
    }
    Py_ssize_t count = PyList_GET_SIZE(dead);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyDict_DelItem(table, PyList_GET_ITEM(dead, i)) < 0) {
            PyErr_Clear();
        }
    }
    Py_DECREF(live);
    Py_DECREF(dead);
    return PyLong_FromSsize_t(count);

error:
    Py_XDECREF(live);
    Py_XDECREF(dead);
    return NULL;
}

/* frame_chain(depth): [(code, f_lasti)] of the caller and its callers, as the walk
 * above reads them. Compared with sys._getframe at import (agent/interp/compiled.py):
 * on any difference the module is not used. */
static PyObject *
speedups_frame_chain(PyObject *module, PyObject *arg)
{
    long depth = PyLong_AsLong(arg);
    if (depth == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *chain = PyList_New(0);
    if (chain == NULL) {
        return NULL;
    }
    Cursor frame = cursor_current();
    for (long i = 0; i < depth && frame != NULL; i++) {
        PyCodeObject *code = cursor_code(frame);
        PyObject *entry = Py_BuildValue("(Oi)", code == NULL ? Py_None : (PyObject *)code,
                                        cursor_lasti(frame));
        if (entry == NULL || PyList_Append(chain, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(chain);
            return NULL;
        }
        Py_DECREF(entry);
        frame = cursor_back(frame);
    }
    return chain;
}

static PyMethodDef speedups_functions[] = {
    {"frame_chain", (PyCFunction)speedups_frame_chain, METH_O,
     PyDoc_STR("frame_chain(depth) -> [(code, f_lasti)]: the caller's frames as the "
               "compiled walk reads them.")},
    {"sweep", (PyCFunction)(void (*)(void))speedups_sweep, METH_FASTCALL,
     PyDoc_STR("sweep(table, refs, tasks) -> int: drop table entries whose key is not the "
               "id of a referent of the weak references in refs or of an item of tasks.")},
    {NULL, NULL, 0, NULL},
};

/* -------------------------------------------------------------------- module */

static int
speedups_exec(PyObject *module)
{
    PyTypeObject *types[] = {&RecorderType, &CreateTaskType, &RegistryAddType};
    const char *names[] = {"Recorder", "CreateTask", "RegistryAdd"};
    for (size_t i = 0; i < 3; i++) {
        if (PyType_Ready(types[i]) < 0) {
            return -1;
        }
        if (PyModule_AddObject(module, names[i], Py_NewRef((PyObject *)types[i])) < 0) {
            Py_DECREF(types[i]);
            return -1;
        }
    }
    return 0;
}

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "asyncio_agent.interp._speedups",
    .m_doc = "The agent's per-task hot path in C (optional; see agent/sites.py).",
    .m_size = -1, /* static types and strings: one interpreter only */
    .m_methods = speedups_functions,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *module = PyModule_Create(&speedups_module);
    if (module != NULL && speedups_exec(module) < 0) {
        Py_CLEAR(module);
    }
    return module;
}
