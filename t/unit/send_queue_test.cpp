#include "send_queue.h"

#include <gtest/gtest.h>

#include <string>

using recording::SendQueue;

namespace {

// Everything the queue holds, as a writer would take it: front() and
// consume() in pieces of at most `piece` bytes. Counts the writes.
std::string drain(SendQueue& queue, size_t piece, size_t* writes = nullptr)
{
    std::string out;
    while (!queue.empty()) {
        std::string_view next = queue.front();
        size_t n = std::min(piece, next.size());
        out.append(next.substr(0, n));
        queue.consume(n);
        if (writes != nullptr) {
            (*writes)++;
        }
    }
    return out;
}

const std::string kLarge(SendQueue::kBorrowFrom, 'L');

}  // namespace

TEST(SendQueue, SmallCommandsGoOutInOneWrite)
{
    SendQueue queue;
    queue.append("*1\r\n$4\r\nPING\r\n", true);
    queue.append("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", false);
    queue.append("*1\r\n$4\r\nPING\r\n", true);
    EXPECT_EQ(queue.front(), "*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n");
    EXPECT_EQ(queue.size(), queue.front().size());
    size_t writes = 0;
    drain(queue, 1 << 20, &writes);
    EXPECT_EQ(writes, 1u);
}

TEST(SendQueue, ALargeKeptCommandIsNotCopied)
{
    SendQueue queue;
    queue.append(kLarge, true);
    EXPECT_EQ(queue.copied_bytes(), 0u);
    EXPECT_EQ(queue.front().data(), kLarge.data());  // written from where it is
    EXPECT_EQ(queue.size(), kLarge.size());
    EXPECT_EQ(drain(queue, 1000), kLarge);
}

TEST(SendQueue, ALargeCommandNotKeptIsCopied)
{
    SendQueue queue;
    std::string command = kLarge;
    queue.append(command, false);
    command.assign(command.size(), 'x');  // the caller's bytes may change at once
    EXPECT_EQ(queue.copied_bytes(), kLarge.size());
    EXPECT_EQ(drain(queue, 1000), kLarge);
}

TEST(SendQueue, ASmallKeptCommandIsCopied)
{
    SendQueue queue;
    std::string small(SendQueue::kBorrowFrom - 1, 's');
    queue.append(small, true);
    EXPECT_EQ(queue.copied_bytes(), small.size());
    EXPECT_NE(queue.front().data(), small.data());
}

TEST(SendQueue, OrderHoldsAcrossCopiedAndKeptBytes)
{
    SendQueue queue;
    std::string large2(SendQueue::kBorrowFrom + 7, 'M');
    queue.append("a", false);
    queue.append(kLarge, true);
    queue.append("b", false);
    queue.append("c", true);
    queue.append(large2, true);
    queue.append("d", false);
    EXPECT_EQ(queue.copied_bytes(), 4u);
    EXPECT_EQ(queue.size(), 4 + kLarge.size() + large2.size());
    size_t writes = 0;
    EXPECT_EQ(drain(queue, 1 << 20, &writes), "a" + kLarge + "bc" + large2 + "d");
    EXPECT_EQ(writes, 5u);  // a, the large one, bc, the other large one, d
    EXPECT_EQ(queue.size(), 0u);
}

TEST(SendQueue, PartialWritesResumeWhereTheyStopped)
{
    SendQueue queue;
    std::string expected;
    for (int i = 0; i < 100; i++) {
        std::string command = "command " + std::to_string(i) + ";";
        queue.append(command, false);
        expected += command;
    }
    queue.append(kLarge, true);
    expected += kLarge;
    EXPECT_EQ(drain(queue, 7), expected);
}

TEST(SendQueue, AWrittenCopyIsCutWhileTheRestWaits)
{
    // Three megabytes of small commands, two of them written: what is left
    // is still what comes next, in order.
    SendQueue queue;
    std::string expected;
    for (int i = 0; queue.size() < 3 * SendQueue::kCompactAt; i++) {
        std::string command = std::to_string(i) + ",";
        queue.append(command, false);
        expected += command;
    }
    size_t taken = 0;
    while (taken < 2 * SendQueue::kCompactAt) {
        size_t n = std::min<size_t>(4096, queue.front().size());
        EXPECT_EQ(queue.front().substr(0, n), std::string_view(expected).substr(taken, n));
        queue.consume(n);
        taken += n;
    }
    EXPECT_EQ(queue.size(), expected.size() - taken);
    EXPECT_EQ(drain(queue, 1 << 20), expected.substr(taken));
}

TEST(SendQueue, SpliceMovesEverythingInOrder)
{
    SendQueue queue;
    SendQueue held;
    queue.append("login;", false);
    held.append("first;", false);
    held.append(kLarge, true);
    held.append("last;", false);
    queue.splice(held);
    EXPECT_TRUE(held.empty());
    EXPECT_EQ(held.size(), 0u);
    EXPECT_EQ(drain(queue, 1 << 20), "login;first;" + kLarge + "last;");
}

TEST(SendQueue, ClearForgetsEverything)
{
    SendQueue queue;
    queue.append("x", false);
    queue.append(kLarge, true);
    queue.clear();
    EXPECT_TRUE(queue.empty());
    EXPECT_EQ(queue.size(), 0u);
    EXPECT_EQ(queue.front(), "");
    queue.append("y", false);
    EXPECT_EQ(queue.front(), "y");
}

TEST(SendQueue, ACommandInPiecesKeepsItsOrder)
{
    SendQueue queue;
    std::string large(SendQueue::kBorrowFrom * 2, 'D');
    std::string_view pieces[] = {"*3\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$32768\r\n", large, "\r\n"};
    queue.append("before;", false);
    queue.append(pieces, 3, true);
    queue.append("after;", false);
    EXPECT_EQ(queue.copied_bytes(), queue.size() - large.size());
    EXPECT_EQ(drain(queue, 1 << 20), "before;" + std::string(pieces[0]) + large + "\r\nafter;");
}
