#include "node/base/log.h"
#include "node/state/consensus.h"

namespace constellation {
namespace {

class SingleVoter : public Consensus {
 public:
  SingleVoter(std::string self, uint64_t last_index, uint64_t term)
      : self_(std::move(self)),
        term_(term == 0 ? 1 : term),
        last_index_(last_index),
        persisted_index_(last_index),
        commit_(last_index),
        hard_state_written_(term != 0) {}

  Status Propose(std::string data) override {
    unstable_.push_back(LogEntry{++last_index_, term_, std::move(data)});
    return Status::Ok();
  }

  bool HasReady() const override {
    return !unstable_.empty() || !committed_.empty() || !hard_state_written_;
  }

  Ready GetReady() override {
    CN_CHECK(in_flight_.empty()) << "GetReady before Advance";
    Ready ready;
    in_flight_ = std::move(unstable_);
    unstable_.clear();
    ready.entries = in_flight_;
    if (!hard_state_written_ || !in_flight_.empty()) {
      uint64_t commit = in_flight_.empty() ? commit_ : in_flight_.back().index;
      ready.hard_state = HardState{term_, self_, commit};
    }
    ready.committed_entries = std::move(committed_);
    committed_.clear();
    return ready;
  }

  void Advance() override {
    // The only voter holds the entries durably: they are committed, and applied next round.
    if (!in_flight_.empty()) {
      CN_CHECK(in_flight_.front().index == persisted_index_ + 1);
      persisted_index_ = in_flight_.back().index;
      commit_ = persisted_index_;
      for (LogEntry& e : in_flight_) committed_.push_back(std::move(e));
      in_flight_.clear();
    }
    hard_state_written_ = true;
  }

  void PersistFailed() override {
    // Forget the in-flight entries and any proposed after them: indices must stay contiguous.
    in_flight_.clear();
    unstable_.clear();
    last_index_ = persisted_index_;
  }

  void Tick() override {}
  uint64_t term() const override { return term_; }
  uint64_t commit_index() const override { return commit_; }
  uint64_t last_index() const override { return last_index_; }
  std::string leader() const override { return self_; }

 private:
  const std::string self_;
  const uint64_t term_;
  uint64_t last_index_;
  uint64_t persisted_index_;
  uint64_t commit_;
  bool hard_state_written_;
  std::vector<LogEntry> unstable_;
  std::vector<LogEntry> in_flight_;
  std::vector<LogEntry> committed_;
};

}  // namespace

std::unique_ptr<Consensus> NewSingleVoter(std::string self, uint64_t last_index, uint64_t term) {
  return std::make_unique<SingleVoter>(std::move(self), last_index, term);
}

}  // namespace constellation
