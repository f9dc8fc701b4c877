/* The two sequential loops of the capture reader, in C.
 *
 * Each record of a pcap file (draft-ietf-opsawg-pcap §5) and each block of a pcapng file
 * (draft-ietf-opsawg-pcapng §3.1) says only its own length, so finding the n-th one needs
 * the n-1 before it: a walk no numpy operation expresses. In Python it costs ~100 ns a
 * record, ~1.3 s of CPU on a 13M-packet capture; here ~10-20 ns on a block just read,
 * bound by memory (each record's length is a load the next step waits for; ~40 ns when
 * the bytes are not in the cache). Everything else the reader does stays vectorised
 * numpy (pcap.py, pcapng.py); their Python loops stay as the fallback when this module
 * was not built, and tests/test_capture_walk.py holds both to the same answers.
 *
 * No record is judged here: the walk stops at the end of the bytes, or (pcapng) at the
 * first block that is not an Enhanced Packet Block of a sane length, exactly where the
 * Python loops stop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t read_u32(const unsigned char *p, int big_endian)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return big_endian ? __builtin_bswap32(v) : v;
}

/* pcap_caplens(data, big_endian, out) -> (records, end)
 *
 * data: the block's bytes; out: a writable buffer of uint32, one per record that can
 * start in data (len(data) // 16 + 1 of them). The record headers are 16 bytes with the
 * captured length at byte 8: the walk appends each record's captured length while that
 * field lies inside data, and returns how many it appended and the offset after the last
 * record (which may lie past the end of data, when that record is cut by it). */
static PyObject *pcap_caplens(PyObject *self, PyObject *args)
{
    Py_buffer data, out;
    int big_endian;
    if (!PyArg_ParseTuple(args, "y*pw*", &data, &big_endian, &out))
        return NULL;
    const unsigned char *p = data.buf;
    uint64_t n = (uint64_t)data.len, off = 0;
    uint32_t *caplens = out.buf;
    Py_ssize_t room = out.len / (Py_ssize_t)sizeof(uint32_t), count = 0;
    Py_BEGIN_ALLOW_THREADS
    while (off + 12 <= n && count < room) {
        uint32_t caplen = read_u32(p + off + 8, big_endian);
        caplens[count++] = caplen;
        off += 16 + (uint64_t)caplen;
    }
    Py_END_ALLOW_THREADS
    int full = off + 12 <= n;  /* stopped for want of room: the caller's buffer is short */
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    if (full) {
        PyErr_SetString(PyExc_ValueError, "pcap_caplens: out has no room for every record");
        return NULL;
    }
    return Py_BuildValue("nK", count, (unsigned long long)off);
}

/* pcapng_epbs(data, start, big_endian, epb_type, min_bytes, max_bytes, out) -> (blocks, end)
 *
 * From offset start, appends to out (int64, one per block that can start in data) the
 * offset of each block whose type is epb_type and whose total length lies in
 * [min_bytes, max_bytes], stepping by that length. Stops at the first other block, or
 * where a block's first 8 bytes (type, length) no longer lie inside data. Returns how
 * many it appended and the offset it stopped at. */
static PyObject *pcapng_epbs(PyObject *self, PyObject *args)
{
    Py_buffer data, out;
    Py_ssize_t start;
    int big_endian;
    unsigned int epb_type, min_bytes, max_bytes;
    if (!PyArg_ParseTuple(args, "y*npIIIw*", &data, &start, &big_endian, &epb_type, &min_bytes,
                          &max_bytes, &out))
        return NULL;
    const unsigned char *p = data.buf;
    uint64_t n = (uint64_t)data.len, off = start < 0 ? 0 : (uint64_t)start;
    int64_t *offsets = out.buf;
    Py_ssize_t room = out.len / (Py_ssize_t)sizeof(int64_t), count = 0;
    int full = 0;
    Py_BEGIN_ALLOW_THREADS
    while (off + 8 <= n) {
        uint32_t btype = read_u32(p + off, big_endian), blen = read_u32(p + off + 4, big_endian);
        if (btype != epb_type || blen < min_bytes || blen > max_bytes)
            break;
        if (count == room) {
            full = 1;
            break;
        }
        offsets[count++] = (int64_t)off;
        off += blen;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    if (full) {
        PyErr_SetString(PyExc_ValueError, "pcapng_epbs: out has no room for every block");
        return NULL;
    }
    return Py_BuildValue("nK", count, (unsigned long long)off);
}

static PyMethodDef methods[] = {
    {"pcap_caplens", pcap_caplens, METH_VARARGS, "Walk pcap record headers."},
    {"pcapng_epbs", pcapng_epbs, METH_VARARGS, "Walk a run of pcapng Enhanced Packet Blocks."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_walk", NULL, -1, methods};

PyMODINIT_FUNC PyInit__walk(void) { return PyModule_Create(&module); }
