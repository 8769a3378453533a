// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

/// Pays many payees in one transaction.
///
/// A payer names each batch with an id of its choosing; an id pays once per payer, so a payer
/// that does not know whether a batch went through (it crashed, the node timed out) sends the
/// same batch again and either it pays or it reverts with `AlreadyPaid`: never twice.
///
/// Each transfer forwards only the 2300 gas stipend. A payee that refuses it (a contract
/// without a payable fallback, or one that runs out of gas) does not stop the batch: its amount
/// is kept here for it to `withdraw`.
contract BatchPay {
    /// payer => batch id => whether it was paid.
    mapping(address => mapping(bytes32 => bool)) public paid;
    /// Amounts payees refused at transfer time, theirs to withdraw.
    mapping(address => uint256) public unclaimed;

    /// One transfer of a batch. `from` is the payer's own name for itself (golem: the
    /// requestor's node id), so a payee can tell whose debt the amount settles.
    event Payment(address indexed payee, bytes32 indexed from, bytes32 batch, uint256 amount);

    error AlreadyPaid(bytes32 batch);
    error LengthMismatch(uint256 payees, uint256 amounts);
    error WrongValue(uint256 sent, uint256 total);
    error NothingToWithdraw();
    error WithdrawFailed();

    /// Pays `amounts[i]` wei to `payees[i]` for every i; the value sent must be their sum.
    function pay(bytes32 batch, bytes32 from, address[] calldata payees, uint256[] calldata amounts)
        external
        payable
    {
        if (payees.length != amounts.length) revert LengthMismatch(payees.length, amounts.length);
        if (paid[msg.sender][batch]) revert AlreadyPaid(batch);
        paid[msg.sender][batch] = true;
        uint256 total = 0;
        for (uint256 i = 0; i < payees.length; ++i) {
            address payee = payees[i];
            uint256 amount = amounts[i];
            total += amount;
            // With `gas: 0` the payee gets the 2300 stipend of a value transfer and no more.
            (bool ok,) = payee.call{value: amount, gas: 0}("");
            if (!ok) {
                unclaimed[payee] += amount;
            }
            emit Payment(payee, from, batch, amount);
        }
        if (total != msg.value) revert WrongValue(msg.value, total);
    }

    /// Sends the caller what it refused earlier.
    function withdraw() external {
        uint256 amount = unclaimed[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        unclaimed[msg.sender] = 0;
        (bool ok,) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert WithdrawFailed();
    }
}
