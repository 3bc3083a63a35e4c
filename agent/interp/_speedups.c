/* The agent's per-task hot path in C (optional; agent/sites.py and agent/hooks.py hold
 * the Python version it mirrors, used whenever this module is absent or switched off).
 * Part of the seam for interpreter internals (agent/interp/): it reads CPython's frame
 * records. It receives every name and constant it shares with Python as an argument
 * (agent/interp/compiled.py builds it); it looks nothing up by name.
 *
 * Types and functions:
 *   Table()
 *       the record table of the compiled path: id(task) -> record, both kept as plain
 *       machine words in one open-addressing array (agent/records.py says why).
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
 * remembered in a short array, the (site, caller) cache is a small array of slots
 * keyed by code pointer and offset instead of dicts keyed by ints, and a task's record
 * goes into a table of machine words: no int object is made per task, and a task
 * touches one cache line of the table (instead of a dict's index, entry and key
 * object), loaded ahead of its write. A cache miss calls SiteRecorder._record_slow,
 * the same Python code the Python path uses, so both paths give the same records.
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

/* --------------------------------------------------------------------- Table */

/* id(task) -> record for the tasks created through a patched create_task, while the
 * registry hook is installed (agent/records.py: why a table, and why it is exact when
 * ids are reused).
 *
 * Why not a dict: per task a dict costs two int objects (the key written, the key
 * looked up), a lookup that reads an index slot, an entry and the stored key object
 * (three cache lines, cold for a table of many live tasks), and a deleted entry leaves
 * a dummy behind until the next resize. Here an entry is two machine words in one
 * array: a task's address (never 0: 0 marks a free entry) and its record. Open
 * addressing with linear probing: an entry sits at or after its home position, with
 * no free entry in between (that invariant is what every lookup relies on, and what
 * table_remove restores by moving later entries back). The load stays at most 1/2, so
 * nearly every operation reads a single cache line.
 *
 * That line is still a miss to memory once the array is larger than the caches (a
 * random place in 4 MB for 100,000 live tasks), and the wait for it was most of the
 * agent's time per task. So writes queue: the registry hook queues "drop this id" and
 * starts loading the entry's line (a prefetch), create_task turns that into "set this
 * record", and the queue is applied QUEUED operations later, in order, when the line
 * has long arrived. Everything that reads the table, or writes it otherwise, applies
 * the queue first (table_flush), so what it sees is exactly what the operations in
 * order leave.
 *
 * Every operation runs with the GIL held and calls no Python code (no object is
 * released, allocation runs no collection), so none is seen half done by a thread or
 * a finalizer. The array is allocated with PyMem_Calloc, so tracemalloc counts it. */

typedef struct {
    uintptr_t key;             /* the task's address; 0: free */
    unsigned long long record; /* (site index << time_bits) | creation millisecond */
} Entry;

#define TABLE_MIN_CAPACITY 1024 /* entries; a power of 2 */
#define QUEUED 8                /* writes waiting for their lines (tasks, roughly) */
#define DROP (~0ULL)            /* a queued write's record: drop the key */

typedef struct {
    PyObject_HEAD
    Entry *entries;      /* NULL until the first record */
    Py_ssize_t mask;     /* capacity - 1, capacity a power of 2 (0 without entries) */
    Py_ssize_t count;    /* keys held (the queue not counted) */
    Py_ssize_t check_at; /* the Recorder calls records.maybe_sweep at this count */
    int shift;           /* 64 - log2(capacity): home positions are the product's top bits */
    int queued;          /* writes in `queue`, oldest first */
    Entry queue[QUEUED]; /* key, and the record to set or DROP */
} Table;

static PyTypeObject TableType;

/* Home position: Fibonacci hashing of the address without its alignment bits, so
 * tasks allocated one after another spread over the whole array. */
static inline Py_ssize_t
home_of(uintptr_t key, int shift)
{
    return (Py_ssize_t)((((unsigned long long)key >> 4) * 0x9E3779B97F4A7C15ULL) >> shift);
}

/* The entry holding `key`, or NULL (the queue not consulted). */
static inline Entry *
table_find(const Table *table, uintptr_t key)
{
    if (table->entries == NULL) {
        return NULL;
    }
    Py_ssize_t i = home_of(key, table->shift);
    for (;;) {
        Entry *entry = &table->entries[i];
        if (entry->key == key) {
            return entry;
        }
        if (entry->key == 0) {
            return NULL;
        }
        i = (i + 1) & table->mask;
    }
}

/* Put key -> record into `entries` (capacity mask + 1, key not there, a free entry
 * left); the count is the caller's. */
static void
entries_put(Entry *entries, Py_ssize_t mask, int shift, uintptr_t key,
            unsigned long long record)
{
    Py_ssize_t i = home_of(key, shift);
    while (entries[i].key != 0) {
        i = (i + 1) & mask;
    }
    entries[i].key = key;
    entries[i].record = record;
}

static int
log2_of(Py_ssize_t capacity)
{
    int bits = 0;
    while (((Py_ssize_t)1 << bits) < capacity) {
        bits++;
    }
    return bits;
}

/* Move every entry into a fresh array of `capacity` entries (a power of 2, at least
 * twice the count). 0, or -1 with MemoryError set (the table is unchanged). */
static int
table_resize(Table *table, Py_ssize_t capacity)
{
    Entry *entries = PyMem_Calloc((size_t)capacity, sizeof(Entry));
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int shift = 64 - log2_of(capacity);
    if (table->entries != NULL) {
        for (Py_ssize_t i = 0; i <= table->mask; i++) {
            if (table->entries[i].key != 0) {
                entries_put(entries, capacity - 1, shift, table->entries[i].key,
                            table->entries[i].record);
            }
        }
        PyMem_Free(table->entries);
    }
    table->entries = entries;
    table->mask = capacity - 1;
    table->shift = shift;
    return 0;
}

/* table[key] = record, now (the queue not consulted). 0, or -1 with MemoryError set
 * (then the key is not in the table: a key already there is only overwritten). */
static int
table_set(Table *table, uintptr_t key, unsigned long long record)
{
    Entry *entry = table_find(table, key);
    if (entry != NULL) {
        entry->record = record;
        return 0;
    }
    if ((table->count + 1) * 2 > table->mask + 1) {
        Py_ssize_t capacity = table->entries == NULL ? TABLE_MIN_CAPACITY : 2 * (table->mask + 1);
        if (table_resize(table, capacity) < 0) {
            return -1;
        }
    }
    entries_put(table->entries, table->mask, table->shift, key, record);
    table->count++;
    return 0;
}

/* Drop `key` now (the queue not consulted); 1 if it was there, else 0. Later entries
 * of the same run move back so that none is left behind a free entry (no tombstones). */
static int
table_remove(Table *table, uintptr_t key)
{
    Entry *entry = table_find(table, key);
    if (entry == NULL) {
        return 0;
    }
    Py_ssize_t mask = table->mask;
    Py_ssize_t hole = entry - table->entries;
    Py_ssize_t i = hole;
    for (;;) {
        i = (i + 1) & mask;
        Entry *next = &table->entries[i];
        if (next->key == 0) {
            break;
        }
        /* `next` may fill the hole unless its home lies cyclically in (hole, i]. */
        Py_ssize_t home = home_of(next->key, table->shift);
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            table->entries[hole] = *next;
            hole = i;
        }
    }
    table->entries[hole].key = 0;
    table->entries[hole].record = 0;
    table->count--;
    return 1;
}

/* Apply the queued writes, oldest first. 0, or -1 with MemoryError set: a record that
 * found no room is lost (its task gets no site); every drop is applied all the same,
 * so no id is ever read with a dead task's record. */
static int
table_flush(Table *table)
{
    int status = 0;
    int queued = table->queued;
    table->queued = 0;
    for (int i = 0; i < queued; i++) {
        Entry *write = &table->queue[i];
        if (write->record == DROP) {
            table_remove(table, write->key);
        }
        else if (table_set(table, write->key, write->record) < 0) {
            status = -1; /* the error stays set; the drops still go */
        }
    }
    return status;
}

/* Queue key -> record (or DROP) and start loading its entry's line. 0, or -1 with
 * MemoryError set (the write is queued all the same). */
static int
table_queue(Table *table, uintptr_t key, unsigned long long record)
{
    int status = 0;
    if (table->queued == QUEUED) {
        /* The oldest writes' lines were asked for tasks ago: apply them all now. */
        status = table_flush(table);
    }
    table->queue[table->queued].key = key;
    table->queue[table->queued].record = record;
    table->queued++;
#if defined(__GNUC__) || defined(__clang__)
    if (table->entries != NULL) {
        __builtin_prefetch(&table->entries[home_of(key, table->shift)], 1);
    }
#endif
    return status;
}

/* Record `record` for `key` (create_task, right after the task's registration queued
 * the drop of its id): the queued drop becomes this write. 0, or -1 with MemoryError
 * set. */
static int
table_queue_record(Table *table, uintptr_t key, unsigned long long record)
{
    if (table->queued > 0 && table->queue[table->queued - 1].key == key) {
        table->queue[table->queued - 1].record = record;
        return 0;
    }
    return table_queue(table, key, record);
}

static void
table_clear(Table *table)
{
    PyMem_Free(table->entries);
    table->entries = NULL;
    table->mask = 0;
    table->count = 0;
    table->check_at = 0;
    table->shift = 64;
    table->queued = 0;
}

/* A key from Python: 1 and *key for an int in 1..2**64-1, else 0 (no error set). */
static int
key_from(PyObject *object, uintptr_t *key)
{
    if (!PyLong_Check(object)) {
        return 0;
    }
    unsigned long long value = PyLong_AsUnsignedLongLong(object);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *key = (uintptr_t)value;
    return value != 0 && value != DROP;
}

static PyObject *
Table_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Table() takes no arguments");
        return NULL;
    }
    Table *self = (Table *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->shift = 64;
    }
    return (PyObject *)self;
}

static void
Table_dealloc(Table *self)
{
    PyMem_Free(self->entries);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Every method below reads or writes the table as the queued writes leave it. */

static Py_ssize_t
Table_length(Table *self)
{
    return table_flush(self) < 0 ? -1 : self->count;
}

static int
Table_contains(Table *self, PyObject *object)
{
    if (table_flush(self) < 0) {
        return -1;
    }
    uintptr_t key;
    return key_from(object, &key) && table_find(self, key) != NULL;
}

static PyObject *
Table_subscript(Table *self, PyObject *object)
{
    if (table_flush(self) < 0) {
        return NULL;
    }
    uintptr_t key;
    Entry *entry = key_from(object, &key) ? table_find(self, key) : NULL;
    if (entry == NULL) {
        PyErr_SetObject(PyExc_KeyError, object);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(entry->record);
}

static int
Table_ass_subscript(Table *self, PyObject *object, PyObject *value)
{
    if (table_flush(self) < 0) {
        return -1;
    }
    uintptr_t key;
    if (!key_from(object, &key)) {
        PyErr_SetString(PyExc_TypeError, "Table keys are ids: ints from 1 to 2**64-2");
        return -1;
    }
    if (value == NULL) {
        if (!table_remove(self, key)) {
            PyErr_SetObject(PyExc_KeyError, object);
            return -1;
        }
        return 0;
    }
    unsigned long long record = PyLong_AsUnsignedLongLong(value);
    if (record == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (record == DROP) {
        PyErr_SetString(PyExc_OverflowError, "a record is below 2**64-1");
        return -1;
    }
    return table_set(self, key, record);
}

static PyObject *
Table_get(Table *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key[, default])");
        return NULL;
    }
    if (table_flush(self) < 0) {
        return NULL;
    }
    uintptr_t key;
    Entry *entry = key_from(args[0], &key) ? table_find(self, key) : NULL;
    if (entry == NULL) {
        return Py_NewRef(nargs > 1 ? args[1] : Py_None);
    }
    return PyLong_FromUnsignedLongLong(entry->record);
}

static PyObject *
Table_pop(Table *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "pop(key[, default])");
        return NULL;
    }
    if (table_flush(self) < 0) {
        return NULL;
    }
    uintptr_t key;
    Entry *entry = key_from(args[0], &key) ? table_find(self, key) : NULL;
    if (entry == NULL) {
        if (nargs > 1) {
            return Py_NewRef(args[1]);
        }
        PyErr_SetObject(PyExc_KeyError, args[0]);
        return NULL;
    }
    PyObject *record = PyLong_FromUnsignedLongLong(entry->record);
    if (record != NULL) {
        table_remove(self, key);
    }
    return record;
}

static PyObject *
Table_clear_method(Table *self, PyObject *Py_UNUSED(ignored))
{
    table_clear(self);
    Py_RETURN_NONE;
}

/* The referent of weak reference `ref` (a new reference), or NULL if it is dead or
 * not a weak reference; -1 with an exception set on error, else 0. */
static int
referent(PyObject *ref, PyObject **object)
{
    *object = NULL;
    if (!PyWeakref_Check(ref)) {
        return 0;
    }
#if PY_VERSION_HEX >= 0x030D0000
    return PyWeakref_GetRef(ref, object) < 0 ? -1 : 0;
#else
    PyObject *found = PyWeakref_GetObject(ref); /* borrowed */
    if (found == NULL) {
        return -1;
    }
    *object = found == Py_None ? NULL : Py_NewRef(found);
    return 0;
#endif
}

/* Copy the entry of `item` (if any) from `table` into `entries`. */
static void
keep_entry(const Table *table, Entry *entries, Py_ssize_t mask, int shift, Py_ssize_t *count,
           PyObject *item)
{
    uintptr_t key = (uintptr_t)item;
    Entry *entry = table_find(table, key);
    if (entry == NULL) {
        return;
    }
    Py_ssize_t i = home_of(key, shift);
    while (entries[i].key != 0) {
        if (entries[i].key == key) {
            return; /* in both collections */
        }
        i = (i + 1) & mask;
    }
    entries[i] = *entry;
    (*count)++;
}

/* sweep(refs, tasks): keep only the entries of live tasks, in a new array. */
static PyObject *
Table_sweep(Table *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PySet_Check(args[0]) || !PySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "sweep(refs: set, tasks: set)");
        return NULL;
    }
    if (table_flush(self) < 0) {
        return NULL;
    }
    PyObject *refs = args[0], *tasks = args[1];
    if (self->entries == NULL) {
        return PyLong_FromLong(0);
    }
    /* The array keeps its size, as CPython's dicts and sets keep theirs: a sweep often
     * comes when a burst of tasks has ended and the next is starting, and a smaller
     * array would be grown again, entry by entry. Its size stays bounded by the peak
     * count of entries, which the sweeps bound by the live tasks. */
    Py_ssize_t capacity = self->mask + 1;
    Entry *entries = PyMem_Calloc((size_t)capacity, sizeof(Entry));
    if (entries == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t mask = capacity - 1, count = 0;
    int shift = self->shift;
    /* Iterating sets and reading weak references runs no Python code: nothing
     * changes the table under the sweep. */
    PyObject *collections[2] = {refs, tasks};
    for (int which = 0; which < 2; which++) {
        PyObject *iterator = PyObject_GetIter(collections[which]);
        if (iterator == NULL) {
            goto error;
        }
        PyObject *item;
        while ((item = PyIter_Next(iterator)) != NULL) {
            PyObject *task = item;
            if (which == 0) {
                int status = referent(item, &task);
                Py_DECREF(item);
                if (status < 0) {
                    Py_DECREF(iterator);
                    goto error;
                }
                if (task == NULL) {
                    continue;
                }
            }
            keep_entry(self, entries, mask, shift, &count, task);
            Py_DECREF(task);
        }
        Py_DECREF(iterator);
        if (PyErr_Occurred()) {
            goto error;
        }
    }
    Py_ssize_t dropped = self->count - count;
    PyMem_Free(self->entries);
    self->entries = entries;
    self->count = count;
    return PyLong_FromSsize_t(dropped);

error:
    PyMem_Free(entries);
    return NULL;
}

static PyObject *
Table_sizeof(Table *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t size = (Py_ssize_t)sizeof(Table);
    if (self->entries != NULL) {
        size += (self->mask + 1) * (Py_ssize_t)sizeof(Entry);
    }
    return PyLong_FromSsize_t(size);
}

static PyMethodDef Table_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Table_get, METH_FASTCALL,
     PyDoc_STR("get(key, default=None): the record of id `key`, else default.")},
    {"pop", (PyCFunction)(void (*)(void))Table_pop, METH_FASTCALL,
     PyDoc_STR("pop(key[, default]): remove and return the record of id `key`.")},
    {"clear", (PyCFunction)Table_clear_method, METH_NOARGS,
     PyDoc_STR("clear(): drop every entry and the array.")},
    {"sweep", (PyCFunction)(void (*)(void))Table_sweep, METH_FASTCALL,
     PyDoc_STR("sweep(refs, tasks) -> int: keep only the entries of the referents of the "
               "weak references in the set refs and of the items of the set tasks; "
               "return how many were dropped.")},
    {"__sizeof__", (PyCFunction)Table_sizeof, METH_NOARGS,
     PyDoc_STR("Bytes used, the array included.")},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Table_as_sequence = {
    .sq_contains = (objobjproc)Table_contains,
};

static PyMappingMethods Table_as_mapping = {
    .mp_length = (lenfunc)Table_length,
    .mp_subscript = (binaryfunc)Table_subscript,
    .mp_ass_subscript = (objobjargproc)Table_ass_subscript,
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "asyncio_agent.interp._speedups.Table",
    .tp_doc = PyDoc_STR("Table(): id(task) -> record (ints below 2**64-1) in one "
                        "open-addressing array; the record table of the compiled path."),
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Table_new,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_as_sequence = &Table_as_sequence,
    .tp_as_mapping = &Table_as_mapping,
    .tp_methods = Table_methods,
};

/* ------------------------------------------------------------------ Recorder */

/* Entries a table may gain between two checks of its size (records.maybe_sweep). */
#define MAINTENANCE_EVERY 4096

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
    int offset;
    int parent_offset;
} Slot;

typedef struct {
    PyObject_HEAD
    PyObject *internal_ids; /* set: id(code) of frames that are never a site */
    PyObject *slow;         /* slow(frame, now) -> record: SiteRecorder._record_slow */
    Table *table;           /* id(task) -> record (asyncio_agent.records.TABLE) */
    PyObject *attr;         /* the record attribute's name (records.RECORD_ATTR) */
    PyObject *span_attr;    /* the span attribute's name (sites.SPAN_ATTR) */
    PyObject *span_probe;   /* None, or called for each task (asyncio_agent.tracing) */
    PyObject *maintenance;  /* records.maybe_sweep: see store_record */
    vectorcallfunc vectorcall;
    unsigned long long time_mask; /* (1 << time_bits) - 1 */
    int use_table;                /* records go to `table` (the registry hook is installed) */
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
    /* Released last: a release may run Python code (weakref callbacks). */
    Py_XDECREF(old.code);
    Py_XDECREF(old.parent_code);
}

static inline unsigned long long
millisecond(double now, unsigned long long mask)
{
    /* int(now * 1000) in the Python path */
    return (unsigned long long)(now * 1000.0) & mask;
}

/* The record for a task created by the code running in `frame`, `steps` frames above
 * the current one, into *out: 0, or -1 with an exception set. */
static int
site_record(Recorder *self, Cursor frame, int steps, unsigned long long *out)
{
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
            *out = slot->site_bits | millisecond(now, self->time_mask);
            return 0;
        }
        int internal = check_internal(self, code);
        if (internal < 0) {
            return -1;
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
            return -1;
        }
        /* Records are ints below 2**64 (site index << time_bits | millisecond). */
        *out = PyLong_AsUnsignedLongLong(record);
        Py_DECREF(record);
        if (*out == (unsigned long long)-1 && PyErr_Occurred()) {
            return -1;
        }
        /* The slow path may have found this code internal and gone further up; then
         * the record is not this frame's to cache. Nor is one without a caller or
         * without a site (the Python path caches neither). */
        unsigned long long bits = found && parent_code != NULL ? *out & ~self->time_mask : 0;
        if (bits) {
            internal = check_internal(self, code);
            if (internal < 0) {
                return -1;
            }
            if (!internal) {
                fill_slot(slot, code, offset, parent_code, parent_offset, bits);
            }
        }
        return 0;
    }
    /* Only internal frames (or none): no site, as in the Python path. */
    PyErr_SetString(PyExc_LookupError, "no application frame");
    return -1;
}

/* Store `record` for `task`: in the table if it registered, else on the task (as an
 * int, made only for such a task). 0, or -1 with an exception set. */
static int
store_record(Recorder *self, PyObject *task, unsigned long long record, int in_table)
{
    if (in_table) {
        Table *table = self->table;
        if (table->count >= table->check_at) {
            /* Each time the table holds MAINTENANCE_EVERY entries more than after the
             * last check, records.maybe_sweep (Python code; here, never in a
             * finalizer) sweeps it if many entries are dead tasks'. A task at a dead
             * task's address replaces its entry and adds none: where addresses are
             * reused, as they mostly are, the check is rare. */
            PyObject *done = PyObject_CallNoArgs(self->maintenance);
            if (done == NULL) {
                return -1;
            }
            Py_DECREF(done);
            table->check_at = table->count + MAINTENANCE_EVERY;
        }
        return table_queue_record(table, (uintptr_t)task, record);
    }
    PyObject *value = PyLong_FromUnsignedLongLong(record);
    if (value == NULL) {
        return -1;
    }
    int status = PyObject_SetAttr(task, self->attr, value);
    Py_DECREF(value);
    return status;
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
    unsigned long long record;
    if (site_record(self, caller == NULL ? NULL : cursor_back(caller), 1, &record) < 0) {
        return NULL;
    }
    int status = store_record(self, args[0], record, self->use_table);
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
                                     &internal_ids, &slow, &TableType, &table, &attr,
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
    self->table = (Table *)Py_NewRef(table);
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
    unsigned long long record;
    if (site_record(recorder, cursor_current(), 0, &record) < 0) {
        return -1;
    }
    /* A task that did not register (an eager task that finished inside create_task,
     * or no registry hook) keeps its record itself: see agent/records.py. */
    int status = store_record(recorder, task, record, recorder->use_table && registered == task);
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
    Table *table;  /* asyncio_agent.records.TABLE */
    PyObject *add; /* the registry's own add */
    vectorcallfunc vectorcall;
} RegistryAdd;

static PyObject *
RegistryAdd_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RegistryAdd *self = (RegistryAdd *)op;
    if (PyVectorcall_NARGS(nargsf) == 1 && kwnames == NULL) {
        /* A task registering owns its id now: a dead task's entry there goes (queued;
         * create_task turns it into the task's own record). A write that found no
         * memory only costs a site: never an error in the program's Task(). */
        last_registered = args[0];
        if (table_queue(self->table, (uintptr_t)args[0], DROP) < 0) {
            PyErr_Clear();
        }
    }
    return PyObject_Vectorcall(self->add, args, nargsf, kwnames);
}

static PyObject *
RegistryAdd_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *table, *add;
    static char *names[] = {"table", "add", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O:RegistryAdd", names, &TableType,
                                     &table, &add)) {
        return NULL;
    }
    RegistryAdd *self = (RegistryAdd *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->table = (Table *)Py_NewRef(table);
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
    .tp_doc = PyDoc_STR("RegistryAdd(table, add)(task): drop id(task) from the Table, then "
                        "add(task)."),
    .tp_basicsize = sizeof(RegistryAdd),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = RegistryAdd_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(RegistryAdd, vectorcall),
    .tp_traverse = (traverseproc)RegistryAdd_traverse,
    .tp_clear = (inquiry)RegistryAdd_clear,
    .tp_dealloc = (destructor)RegistryAdd_dealloc,
};

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
    {NULL, NULL, 0, NULL},
};

/* -------------------------------------------------------------------- module */

static int
speedups_exec(PyObject *module)
{
    PyTypeObject *types[] = {&TableType, &RecorderType, &CreateTaskType, &RegistryAddType};
    const char *names[] = {"Table", "Recorder", "CreateTask", "RegistryAdd"};
    for (size_t i = 0; i < 4; i++) {
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
